"""Building instances from a semantic interior / edge / background output (seeded watershed).

See :mod:`terraseg.instances` for how chunk results are merged into global ids.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from terraseg.errors import ConfigError

__all__ = ["Landscape", "instances_from_boundary"]

Landscape = Literal["edge", "distance"]

_FOUR = ndi.generate_binary_structure(2, 1)


def instances_from_boundary(
    probs_or_labels: NDArray[Any],
    *,
    interior_class: int = 1,
    edge_class: int = 2,
    min_seed_px: int = 4,
    min_instance_px: int = 1,
    seed_thresh: float = 0.5,
    building_thresh: float = 0.5,
    landscape: Landscape = "edge",
    keep_unseeded: bool = True,
) -> NDArray[np.uint32]:
    """Building instances from interior / edge / background predictions, by seeded watershed.

    Seeds are the 4-connected components of confident building interior with at
    least ``min_seed_px`` pixels. Each seed floods the building mask (interior or
    edge) through a landscape: the edge probability (``landscape="edge"``), or the
    Euclidean distance to the nearest seed (``"distance"``, always used for class
    labels). Edge bands between touching buildings are thus split between their
    seeds, at the ridge of the edge probability or half way.

    Parameters
    ----------
    probs_or_labels
        ``(K, h, w)`` float class probabilities in ``[0, 1]`` (uint8 codes from
        :func:`terraseg.core.stitch.quantize_probs` must be divided by 254 first), or
        ``(h, w)`` integer class labels. Any other class (background, road, nodata)
        is background.
    interior_class, edge_class
        Channel (or label value) of the building interior and building edge classes.
    min_seed_px
        Interior components smaller than this do not seed an instance.
    min_instance_px
        Instances smaller than this are dropped (set to 0).
    seed_thresh
        A pixel is seed interior where ``p[interior] >= seed_thresh`` and it is
        building (probabilities only).
    building_thresh
        A pixel is building where ``p[interior] + p[edge] >= building_thresh``
        (probabilities only).
    landscape
        ``"edge"`` (edge probability) or ``"distance"`` (distance to the seeds).
    keep_unseeded
        Give each 4-connected building component that no seed reached its own id
        (small isolated buildings whose interior vanished); otherwise it stays 0.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` uint32 labels ``1..n`` (0 background): seeded instances first, in
        raster order of their seed's first pixel, then unseeded ones. The same input
        always gives the same output.

    Notes
    -----
    The watershed is local: a pixel's label depends on the seeds and landscape
    within the flooding distance of its instance, so a chunk labelled with a halo
    as wide as the largest building gives the one-pass labels over its core,
    except near a halo edge that cuts a seed (see :class:`InstanceMerger`).

    Examples
    --------
    Two touching 4 x 3 buildings (1 interior, 2 edge), split along their common wall:

    >>> cls = np.zeros((6, 8), np.uint8)
    >>> cls[1:5, 1:7] = 2
    >>> cls[2:4, 2] = cls[2:4, 5] = 1
    >>> instances_from_boundary(cls, min_seed_px=1)[1:5, 1:7].tolist()
    [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2]]
    """
    if landscape not in ("edge", "distance"):
        raise ConfigError(
            f"landscape must be 'edge' or 'distance', got {landscape!r}", landscape=landscape
        )
    if min_seed_px < 1 or min_instance_px < 1:
        raise ConfigError(
            f"min_seed_px and min_instance_px must be >= 1, got {min_seed_px} and "
            f"{min_instance_px}",
            min_seed_px=min_seed_px,
            min_instance_px=min_instance_px,
        )
    building, interior, relief = _masks(
        np.asarray(probs_or_labels),
        interior_class=interior_class,
        edge_class=edge_class,
        seed_thresh=seed_thresh,
        building_thresh=building_thresh,
        landscape=landscape,
    )
    seeds, n_seeds = _seeds(interior, min_seed_px)
    levels = _levels(seeds, relief)
    flooded: NDArray[np.integer[Any]] = watershed(  # type: ignore[no-untyped-call]
        levels, markers=seeds, mask=building, connectivity=1
    )
    out: NDArray[np.uint32] = flooded.astype(np.uint32)
    n = _label_unseeded(out, building, n_seeds) if keep_unseeded else n_seeds
    if min_instance_px > 1 and n:
        out = _drop_small(out, n, min_instance_px)
    return out


def _masks(
    arr: NDArray[Any],
    *,
    interior_class: int,
    edge_class: int,
    seed_thresh: float,
    building_thresh: float,
    landscape: Landscape,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.floating[Any]] | None]:
    """``(building, seed interior, relief)`` of labels or probabilities.

    ``relief`` is the edge probability for ``landscape="edge"`` and probabilities,
    else ``None`` (flood by distance to the seeds).
    """
    relief: NDArray[np.floating[Any]] | None
    if arr.ndim == 2:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ConfigError(
                f"(h, w) input must be integer class labels, got dtype {arr.dtype}; "
                "pass probabilities as (K, h, w)",
                dtype=arr.dtype,
            )
        building = (arr == interior_class) | (arr == edge_class)
        interior = arr == interior_class
        relief = None
    elif arr.ndim == 3:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConfigError(
                f"(K, h, w) input must be float probabilities, got dtype {arr.dtype}; "
                "divide uint8 codes by 254 first",
                dtype=arr.dtype,
            )
        k = arr.shape[0]
        if not (0 <= interior_class < k and 0 <= edge_class < k):
            raise ConfigError(
                f"interior_class={interior_class} and edge_class={edge_class} must be "
                f"channels of the {k}-class probabilities",
                n_classes=k,
            )
        p_int = arr[interior_class]
        p_edge = arr[edge_class]
        building = (p_int + p_edge) >= building_thresh
        interior = building & (p_int >= seed_thresh)
        relief = p_edge if landscape == "edge" else None
    else:
        raise ConfigError(
            f"expected (K, h, w) probabilities or (h, w) labels, got shape {arr.shape}",
            shape=arr.shape,
        )
    return building, interior, relief


def _seeds(interior: NDArray[np.bool_], min_seed_px: int) -> tuple[NDArray[np.int32], int]:
    """4-connected components of ``interior`` with at least ``min_seed_px`` pixels, ``1..n``."""
    seeds, n_seeds = ndi.label(interior, structure=_FOUR)
    if n_seeds and min_seed_px > 1:
        sizes = np.bincount(seeds.ravel(), minlength=n_seeds + 1)
        keep = sizes >= min_seed_px
        keep[0] = False
        lut = np.zeros(n_seeds + 1, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        seeds = lut[seeds]
        n_seeds = int(keep.sum())
    return seeds, n_seeds


def _label_unseeded(out: NDArray[np.uint32], building: NDArray[np.bool_], n: int) -> int:
    """Number the building components no seed reached ``n + 1, ...`` in ``out``; the new count."""
    rest = building & (out == 0)
    if rest.any():
        extra, n_extra = ndi.label(rest, structure=_FOUR)
        out[rest] = extra[rest].astype(np.uint32) + np.uint32(n)
        n += n_extra
    return n


def _drop_small(out: NDArray[np.uint32], n: int, min_px: int) -> NDArray[np.uint32]:
    """``out`` (labels ``1..n``) without instances under ``min_px`` pixels, renumbered."""
    sizes = np.bincount(out.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    lut32 = np.zeros(n + 1, np.uint32)
    lut32[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    relabelled: NDArray[np.uint32] = lut32[out]
    return relabelled


def _levels(
    seeds: NDArray[np.integer[Any]], relief: NDArray[np.floating[Any]] | None
) -> NDArray[np.float64]:
    """The flooding landscape, made free of position-dependent ties.

    skimage's watershed breaks ties between equal levels by push order, and pushes
    every marker pixel with the same age, so equal-level markers pop in an order
    that depends on the heap's size, i.e. on the window. Here the landscape takes
    integer levels (squared distance to the nearest seed, or the edge probability
    in steps of 1/1024) and marker pixels get a fraction below one level that
    grows in raster order: every tie is then broken by relative position alone,
    so a window of the scene floods like the whole scene wherever the seeds and
    landscape it depends on lie inside the window.
    """
    if relief is None:
        dist = ndi.distance_transform_edt(seeds == 0)
        levels: NDArray[np.float64] = np.rint(np.square(dist)).astype(np.float64)
    else:
        levels = np.rint(np.clip(relief, 0.0, 1.0) * 1024.0).astype(np.float64)
    flat = levels.reshape(-1)
    where = np.flatnonzero(seeds.reshape(-1))
    flat[where] += 0.5 * (where + 1) / (flat.size + 1)
    return levels
