"""Per-window arithmetic of object extraction (``terraseg extract``): which pixels are the object.

Two ways to find the object under a clicked pixel of one window, both on arrays
the driver (:mod:`terraseg.engine.extract`) read; nothing here opens a file:

- :func:`instance_at`: the building instance under the pixel, from a model's
  class probabilities (a boundary model's interior / edge channels through the
  engine's seeded watershed, :func:`terraseg.instances.instances_from_boundary`;
  a semantic model's building class as 4-connected components);
- :func:`grow_region`: no model. SLIC superpixels of the window (about
  ``segment_size_px`` pixels each, :func:`color_segments`), then the union of the
  clicked superpixel with the superpixels connected to it whose mean colour
  (CIELAB, lightness weighted by ``lightness_weight`` so that the sunny and shaded
  facets of one roof stay together) is within ``max_color_distance`` of the
  clicked one's, with holes filled (roof furniture, a tree over the roof;
  :func:`similar_union`).

Both return a boolean mask of the one 4-connected object that holds the pixel,
and :func:`touches_edge` tells the driver when that object may continue past the
window, so it reads a larger one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from terraseg.errors import ConfigError

__all__ = [
    "DEFAULT_LIGHTNESS_WEIGHT",
    "DEFAULT_MAX_COLOR_DISTANCE",
    "color_segments",
    "component_at",
    "grow_region",
    "instance_at",
    "similar_union",
    "to_unit_rgb",
    "touches_edge",
]

_FOUR = ndi.generate_binary_structure(2, 1)

#: CIELAB distance (ΔE, lightness weighted) within which a superpixel joins the region.
DEFAULT_MAX_COLOR_DISTANCE = 12.0
#: Weight of the lightness difference in that distance: a gable roof's two facets
#: differ mostly in lightness (sun and shade), a roof and the ground beside it in colour.
DEFAULT_LIGHTNESS_WEIGHT = 0.5


def component_at(mask: NDArray[np.bool_], rc: tuple[int, int]) -> NDArray[np.bool_]:
    """The 4-connected component of ``mask`` holding pixel ``rc = (row, col)`` (empty if off).

    Examples
    --------
    >>> m = np.array([[1, 1, 0, 1], [0, 1, 0, 1]], bool)
    >>> component_at(m, (0, 0)).astype(int).tolist()
    [[1, 1, 0, 0], [0, 1, 0, 0]]
    >>> bool(component_at(m, (0, 2)).any())
    False
    """
    if not mask[rc]:
        return np.zeros(mask.shape, bool)
    labels, _ = ndi.label(mask, structure=_FOUR)
    out: NDArray[np.bool_] = labels == labels[rc]
    return out


def touches_edge(
    mask: NDArray[np.bool_], sides: tuple[bool, bool, bool, bool], margin_px: int = 1
) -> bool:
    """Whether ``mask`` reaches within ``margin_px`` of a window side marked in ``sides``.

    ``sides`` is ``(top, bottom, left, right)``: True for a side inside the scene
    (the object may go on beyond it), False for a side on the scene's edge.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:3, 0:2] = True
    >>> touches_edge(m, (True, True, True, True)), touches_edge(m, (True, True, False, True))
    (True, False)
    """
    k = max(1, margin_px)
    top, bottom, left, right = sides
    return bool(
        (top and mask[:k].any())
        or (bottom and mask[-k:].any())
        or (left and mask[:, :k].any())
        or (right and mask[:, -k:].any())
    )


def instance_at(
    probs: NDArray[np.floating[Any]],
    rc: tuple[int, int],
    *,
    building: int,
    edge: int | None,
    valid: NDArray[np.bool_] | None = None,
    seed_p: float = 0.6,
    min_seed_px: int = 6,
    search_px: int = 2,
) -> tuple[NDArray[np.bool_], float]:
    """The building instance under pixel ``rc`` of a window's class probabilities.

    Parameters
    ----------
    probs
        ``(K, h, w)`` float class probabilities of the window (activated).
    rc
        ``(row, col)`` of the clicked pixel in the window.
    building, edge
        Channels of the building (interior) class and of the ``building edge``
        class (``None`` for a semantic model: buildings are then the 4-connected
        components of the pixels whose most likely class is ``building``).
    valid
        ``(h, w)`` input validity; invalid pixels are never building.
    seed_p, min_seed_px
        The engine's watershed settings (confident interior seeds, smallest seed).
    search_px
        When ``rc`` itself is not building, the nearest building pixel within this
        Chebyshev distance is taken (a click on a building's outline).

    Returns
    -------
    (mask, score)
        ``(h, w)`` bool mask of the instance (all False when no building is at
        ``rc``) and its mean building probability (interior + edge; NaN when none).
    """
    from terraseg.instances import instances_from_boundary

    p = np.asarray(probs, np.float32)
    if valid is not None:
        p = np.where(valid[None], p, np.float32(0.0))
    if edge is not None:
        labels = instances_from_boundary(
            np.stack([p[building], p[edge]]),
            interior_class=0,
            edge_class=1,
            seed_thresh=seed_p,
            building_thresh=0.5,
            min_seed_px=min_seed_px,
            landscape="edge",
        )
    else:
        is_building = (p.argmax(axis=0) == building) & (p[building] > 0)
        labels, _ = ndi.label(is_building, structure=_FOUR)
    found = _label_near(np.asarray(labels), rc, search_px)
    if found == 0:
        return np.zeros(labels.shape, bool), math.nan
    mask = component_at(np.asarray(labels == found), _nearest_in(labels == found, rc))
    score_map = p[building] + (p[edge] if edge is not None else 0.0)
    return mask, float(score_map[mask].mean())


def _label_near(labels: NDArray[Any], rc: tuple[int, int], search_px: int) -> int:
    """The label at ``rc``, else the one nearest to it within ``search_px`` (0 if none)."""
    if labels[rc]:
        return int(labels[rc])
    r, c = rc
    h, w = labels.shape
    rows = slice(max(r - search_px, 0), min(r + search_px + 1, h))
    cols = slice(max(c - search_px, 0), min(c + search_px + 1, w))
    patch = labels[rows, cols]
    if not patch.any():
        return 0
    yy, xx = np.nonzero(patch)
    d2 = (yy + rows.start - r) ** 2 + (xx + cols.start - c) ** 2
    i = int(np.argmin(d2))
    return int(patch[yy[i], xx[i]])


def _nearest_in(mask: NDArray[np.bool_], rc: tuple[int, int]) -> tuple[int, int]:
    """``rc`` when it is in ``mask``, else the nearest pixel of ``mask``."""
    if mask[rc]:
        return rc
    yy, xx = np.nonzero(mask)
    i = int(np.argmin((yy - rc[0]) ** 2 + (xx - rc[1]) ** 2))
    return int(yy[i]), int(xx[i])


def to_unit_rgb(data: NDArray[Any], valid: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
    """``(band, y, x)`` raw values → ``(y, x, 3)`` float in ``[0, 1]``.

    uint8 is divided by 255; other dtypes are stretched between the 2nd and 98th
    percentiles of the window's valid pixels, per band. One or two bands are
    repeated to three (grey).
    """
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise ConfigError(f"expected (band, y, x) data, got shape {arr.shape}", shape=arr.shape)
    bands = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, axis=0)
    if bands.dtype == np.uint8:
        unit = bands.astype(np.float64) / 255.0
    else:
        f = bands.astype(np.float64)
        pick = valid if valid is not None and valid.any() else np.ones(f.shape[1:], bool)
        lo = np.array([np.percentile(b[pick], 2) for b in f])
        hi = np.array([np.percentile(b[pick], 98) for b in f])
        span = np.where(hi > lo, hi - lo, 1.0)
        unit = np.clip((f - lo[:, None, None]) / span[:, None, None], 0.0, 1.0)
    out: NDArray[np.float64] = np.ascontiguousarray(np.moveaxis(unit, 0, -1))
    return out


def color_segments(
    rgb: NDArray[np.floating[Any]],
    *,
    valid: NDArray[np.bool_] | None = None,
    segment_size_px: float = 16.0,
    compactness: float = 10.0,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """SLIC superpixels of a window and their mean CIELAB colours.

    Parameters
    ----------
    rgb
        ``(y, x, 3)`` colours in ``[0, 1]`` (:func:`to_unit_rgb`), smoothed here
        (Gaussian, 1 px) before the conversion to CIELAB.
    valid
        ``(h, w)`` validity; invalid pixels get label 0.
    segment_size_px
        Mean superpixel area, pixels.
    compactness
        SLIC compactness (colour against space; higher is squarer).

    Returns
    -------
    (labels, means)
        ``(h, w)`` int64 labels ``1..n`` (0: invalid) and ``(n + 1, 3)`` mean L*, a*, b*
        per label (row 0 unused).
    """
    from skimage.color import rgb2lab
    from skimage.segmentation import slic

    if not (segment_size_px >= 1 and math.isfinite(segment_size_px)):
        raise ConfigError(
            f"segment_size_px must be >= 1, got {segment_size_px}; e.g. 16",
            segment_size_px=segment_size_px,
        )
    h, w = rgb.shape[:2]
    smooth = ndi.gaussian_filter(np.asarray(rgb, np.float64), sigma=(0.5, 0.5, 0.0))
    lab = rgb2lab(smooth)
    n_segments = max(1, round(h * w / segment_size_px))
    # SLIC converts to CIELAB itself (its compactness is for L* in 0..100: given Lab
    # values it rescales them to 0..1 and the segments become a plain grid); no mask=:
    # skimage then seeds by k-means over the masked pixels, seconds for a 512-px window
    seg = np.asarray(
        slic(
            smooth,
            n_segments=n_segments,
            compactness=compactness,
            channel_axis=-1,
            convert2lab=True,
            start_label=1,
            enforce_connectivity=True,
        ),
        np.int64,
    )
    if valid is not None:
        seg[~valid] = 0
    n = int(seg.max())
    count = np.bincount(seg.ravel(), minlength=n + 1).astype(np.float64)
    means = (
        np.stack(
            [
                np.bincount(seg.ravel(), weights=lab[..., i].ravel(), minlength=n + 1)
                for i in range(3)
            ],
            axis=1,
        )
        / np.maximum(count, 1)[:, None]
    )
    return seg, means


def similar_union(
    labels: NDArray[np.int64],
    means: NDArray[np.float64],
    rc: tuple[int, int],
    *,
    max_color_distance: float = DEFAULT_MAX_COLOR_DISTANCE,
    lightness_weight: float = DEFAULT_LIGHTNESS_WEIGHT,
) -> NDArray[np.bool_]:
    """The superpixel at ``rc`` and those connected to it of a similar colour, holes filled.

    A superpixel is similar when its mean colour is within ``max_color_distance``
    (CIELAB, lightness difference times ``lightness_weight``) of the clicked
    superpixel's. Returns the 4-connected region holding ``rc`` (empty when
    ``rc`` is invalid), holes filled except where ``labels`` is 0.
    """
    if not (max_color_distance > 0 and math.isfinite(max_color_distance)):
        raise ConfigError(
            f"max_color_distance must be a positive CIELAB distance, got {max_color_distance}; "
            f"e.g. {DEFAULT_MAX_COLOR_DISTANCE:g}",
            max_color_distance=max_color_distance,
        )
    if labels[rc] == 0:
        return np.zeros(labels.shape, bool)
    scale = np.array([lightness_weight, 1.0, 1.0])
    dist = np.sqrt((((means - means[labels[rc]]) * scale) ** 2).sum(axis=1))
    similar = dist <= max_color_distance
    similar[0] = False
    region = component_at(similar[labels], rc)
    filled: NDArray[np.bool_] = ndi.binary_fill_holes(region) & (labels > 0)
    return component_at(filled, rc)


def grow_region(
    rgb: NDArray[np.floating[Any]],
    rc: tuple[int, int],
    *,
    valid: NDArray[np.bool_] | None = None,
    segment_size_px: float = 16.0,
    compactness: float = 10.0,
    max_color_distance: float = DEFAULT_MAX_COLOR_DISTANCE,
    lightness_weight: float = DEFAULT_LIGHTNESS_WEIGHT,
) -> NDArray[np.bool_]:
    """The region around pixel ``rc``: a union of similar-colour superpixels, holes filled.

    :func:`color_segments` then :func:`similar_union`, with their parameters.

    Examples
    --------
    A red square on grey; a click in it gives the square, give or take its outermost
    pixels (the 1-px smoothing blurs them into the grey):

    >>> img = np.full((40, 40, 3), 0.5); img[10:30, 12:28] = (0.8, 0.2, 0.2)
    >>> square = np.zeros((40, 40), bool); square[10:30, 12:28] = True
    >>> m = grow_region(img, (15, 20))
    >>> bool(m[12:28, 14:26].all()), float((m & square).sum() / (m | square).sum()) > 0.9
    (True, True)
    """
    labels, means = color_segments(
        rgb, valid=valid, segment_size_px=segment_size_px, compactness=compactness
    )
    return similar_union(
        labels, means, rc, max_color_distance=max_color_distance, lightness_weight=lightness_weight
    )
