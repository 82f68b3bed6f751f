"""Training targets for instance models, built from building instance ids.

Pure numpy/scipy on arrays the caller rasterized (one id per building polygon,
0 = none), so the same vector labels serve every task:

- :func:`boundary_classes`: dense classes for a *boundary* model — background,
  building interior, road, building edge. The edge is the band of each building
  within ``edge_px`` of ANOTHER building (where houses touch or nearly touch), so
  the interiors of neighbouring buildings never touch and each one seeds its own
  instance in :func:`terraseg.instances.instances_from_boundary`; an isolated
  building is all interior, however small.
- :func:`detection_targets`: per-instance boxes and masks for a Mask R-CNN-style
  *detection* model (torchvision's target format, as numpy).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = [
    "BOUNDARY_CLASS_NAMES",
    "EDGE_CLASS",
    "boundary_classes",
    "detection_targets",
]

BOUNDARY_CLASS_NAMES = ("background", "building", "road", "building edge")
"""Classes of a boundary model, in channel order: the semantic three, then the edge."""
EDGE_CLASS = 3
"""Channel (and class value) of the building edge in :data:`BOUNDARY_CLASS_NAMES`."""


def boundary_classes(
    instance_ids: NDArray[np.integer],
    classes: NDArray[np.integer],
    *,
    edge_px: int = 2,
    building_class: int = 1,
    ignore_value: int = 255,
) -> NDArray[np.uint8]:
    """Boundary-model targets ``(y, x)`` uint8 from instance ids and semantic classes.

    Parameters
    ----------
    instance_ids
        ``(y, x)`` building ids (0 = no building); each building one id.
    classes
        ``(y, x)`` semantic classes (0 background, 1 building, 2 road; ``ignore_value``
        = not labelled). Building pixels are taken from ``instance_ids``.
    edge_px
        Width of the contact band on each side of where two buildings meet (or come
        closer than ``edge_px``), pixels (Chebyshev).
    building_class
        Class value of buildings in ``classes`` (and of the interior in the output).
    ignore_value
        Kept as is: pixels the loss ignores.

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` uint8: 0 background, 1 building interior, 2 road,
        :data:`EDGE_CLASS` building edge, ``ignore_value`` kept.

    Examples
    --------
    Two 4×4 houses sharing a wall get separate interiors:

    >>> ids = np.zeros((6, 10), np.int32)
    >>> ids[1:5, 1:5], ids[1:5, 5:9] = 1, 2
    >>> boundary_classes(ids, np.zeros_like(ids), edge_px=1)[2].tolist()
    [0, 1, 1, 1, 3, 3, 1, 1, 1, 0]
    """
    if instance_ids.shape != classes.shape:
        raise ValueError(f"shapes differ: ids {instance_ids.shape}, classes {classes.shape}")
    ids = np.asarray(instance_ids)
    out = np.asarray(classes).astype(np.uint8, copy=True)
    out[(out == building_class) & (ids == 0)] = 0  # buildings come from the ids
    size = 2 * edge_px + 1
    # A building pixel is edge when another building's pixel lies within edge_px
    # (Chebyshev): the max filter over all ids, or the min filter over building
    # ids only, differs from its own id. Background does not count, so an
    # isolated building has no edge at all and small sheds keep their interior.
    building = ids > 0
    big = np.iinfo(ids.dtype).max if np.issubdtype(ids.dtype, np.integer) else ids.max() + 1
    hi = ndi.maximum_filter(ids, size=size, mode="nearest")
    lo = ndi.minimum_filter(np.where(building, ids, big), size=size, mode="nearest")
    contact = building & ((hi != ids) | (lo != ids))
    out[building] = building_class
    out[contact] = EDGE_CLASS
    return out


def detection_targets(
    instance_ids: NDArray[np.integer], *, min_px: int = 4
) -> tuple[NDArray[np.float32], NDArray[np.uint8], NDArray[np.int64]]:
    """Per-instance boxes and masks of a chip, in torchvision's detection target format.

    Parameters
    ----------
    instance_ids
        ``(y, x)`` building ids (0 = none); ids need not be consecutive.
    min_px
        Instances with fewer visible pixels are left out (slivers cut by the chip edge).

    Returns
    -------
    boxes, masks, ids
        ``boxes`` ``(n, 4)`` float32 ``x0, y0, x1, y1`` in pixels (exclusive max),
        ``masks`` ``(n, y, x)`` uint8 0/1, ``ids`` ``(n,)`` the instance ids kept.

    Examples
    --------
    >>> ids = np.zeros((5, 6), np.int32)
    >>> ids[1:3, 1:4] = 7
    >>> boxes, masks, kept = detection_targets(ids)
    >>> boxes.tolist(), int(masks.sum()), kept.tolist()
    ([[1.0, 1.0, 4.0, 3.0]], 6, [7])
    """
    ids = np.asarray(instance_ids)
    h, w = ids.shape
    found = ndi.find_objects(ids.astype(np.int64)) if ids.max() > 0 else []
    boxes: list[list[float]] = []
    masks: list[NDArray[np.uint8]] = []
    kept: list[int] = []
    for k, sl in enumerate(found, start=1):
        if sl is None:
            continue
        mask = ids[sl] == k
        if int(mask.sum()) < min_px:
            continue
        full = np.zeros((h, w), np.uint8)
        full[sl] = mask
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        masks.append(full)
        kept.append(k)
    if not kept:
        return np.zeros((0, 4), np.float32), np.zeros((0, h, w), np.uint8), np.zeros(0, np.int64)
    return np.asarray(boxes, np.float32), np.stack(masks), np.asarray(kept, np.int64)
