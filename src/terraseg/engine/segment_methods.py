"""Per-window arithmetic of the model-free segmentation methods (``terraseg segment``).

Every function here works on one window's array, ``(band, y, x)``, and on
global parameters fitted once per scene (a threshold, k-means centres, band
ranges), so a chunk's result never depends on which chunk it is: the scene
driver (:mod:`terraseg.engine.segment`) reads the windows, fits the parameters
on a decimated sample and writes the outputs. Nothing here opens a file.

Bands are 1-based and named ``b1``, ``b2``...; the spectral indexes assume the
band order red, green, blue (and near infrared as band 4):

- ``ndvi = (b4 - b1) / (b4 + b1)`` (vegetation, 4-band scenes);
- ``ndwi = (b2 - b4) / (b2 + b4)`` (McFeeters' water index, 4-band scenes);
- ``exg = 2 g - r - b`` on chromatic coordinates ``r = b1 / (b1 + b2 + b3)`` ...
  (excess green, vegetation in RGB scenes).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from terraseg.errors import ConfigError

__all__ = [
    "INDEX_NAMES",
    "SpectralIndex",
    "apply_kmeans",
    "compute_index",
    "evaluate_expression",
    "fit_kmeans",
    "fit_otsu",
    "slic_window",
    "slic_step_px",
]

SpectralIndex = Literal["ndvi", "ndwi", "exg"]
INDEX_NAMES: tuple[SpectralIndex, ...] = ("ndvi", "ndwi", "exg")
_INDEX_BANDS: dict[str, int] = {"ndvi": 4, "ndwi": 4, "exg": 3}

Floats = NDArray[np.float32]


def _ratio(a: Floats, b: Floats) -> Floats:
    """``(a - b) / (a + b)``, 0 where ``a + b == 0``."""
    den = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den != 0, (a - b) / np.where(den != 0, den, 1), 0)
    return out.astype(np.float32)


def compute_index(data: NDArray[Any], name: str) -> Floats:
    """A spectral index of one window.

    Parameters
    ----------
    data
        ``(band, y, x)`` raw values, bands in the scene order (red, green, blue, nir).
    name
        ``"ndvi"``, ``"ndwi"`` (4 bands) or ``"exg"`` (3 or more bands).

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` float32; NDVI and NDWI in ``[-1, 1]``, ExG in ``[-1, 2]``.

    Raises
    ------
    ConfigError
        Unknown index, or too few bands.

    Examples
    --------
    >>> d = np.array([[[10]], [[20]], [[30]], [[90]]], np.uint8)
    >>> round(float(compute_index(d, "ndvi")[0, 0]), 3)
    0.8
    >>> round(float(compute_index(d, "exg")[0, 0]), 3)
    0.0
    """
    check_index(name, int(data.shape[0]))
    f = data.astype(np.float32)
    if name == "ndvi":
        return _ratio(f[3], f[0])
    if name == "ndwi":
        return _ratio(f[1], f[3])
    total = f[0] + f[1] + f[2]
    safe = np.where(total != 0, total, 1)
    r, g, b = (np.where(total != 0, f[i] / safe, 0) for i in range(3))
    return (2 * g - r - b).astype(np.float32)


def check_index(name: str, n_bands: int) -> None:
    """Raise :class:`ConfigError` unless index ``name`` can be computed from ``n_bands``."""
    if name not in _INDEX_BANDS:
        raise ConfigError(
            f"unknown index {name!r}; use one of {', '.join(INDEX_NAMES)}", index=name
        )
    need = _INDEX_BANDS[name]
    if n_bands < need:
        raise ConfigError(
            f"index {name!r} needs {need} bands (red, green, blue{', nir' if need == 4 else ''}) "
            f"but the scene has {n_bands}; use exg for an RGB scene",
            index=name,
        )


# ------------------------------------------------------------------ expressions

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater,
    ast.GtE: np.greater_equal, ast.Eq: np.equal, ast.NotEq: np.not_equal,
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
}


def parse_expression(expr: str, n_bands: int) -> ast.Expression:
    """Parse and check a band expression (see :func:`evaluate_expression`).

    Raises
    ------
    ConfigError
        Syntax error, a name other than ``b1..bN`` or an index, or an operation
        outside the allowed set.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(
            f"cannot parse expression {expr!r}: {exc.msg}; write e.g. \"b1 > 120\"",
            expression=expr,
        ) from None
    allowed = (ast.Expression, ast.Compare, ast.BinOp, ast.BoolOp, ast.UnaryOp, ast.Name,
               ast.Constant, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
               *_COMPARE, *_BINARY)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ConfigError(
                f"expression {expr!r} uses {type(node).__name__}, which is not allowed; "
                "use band names b1..bN, ndvi/ndwi/exg, numbers, + - * /, comparisons, "
                "and/or/not",
                expression=expr,
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ConfigError(f"expression {expr!r}: {node.value!r} is not a number",
                              expression=expr)
        if isinstance(node, ast.Name):
            _check_name(node.id, n_bands, expr)
    return tree


def _check_name(name: str, n_bands: int, expr: str) -> None:
    if name in _INDEX_BANDS:
        check_index(name, n_bands)
        return
    if not (name.startswith("b") and name[1:].isdigit() and 1 <= int(name[1:]) <= n_bands):
        raise ConfigError(
            f"expression {expr!r} names {name!r}; the scene has bands b1..b{n_bands} "
            f"(or use {', '.join(INDEX_NAMES)})",
            expression=expr,
        )


def evaluate_expression(expr: str, data: NDArray[Any]) -> NDArray[np.bool_]:
    """Evaluate a boolean band expression on one window.

    Parameters
    ----------
    expr
        Python-like expression over ``b1..bN`` (1-based bands) and the indexes
        ``ndvi``, ``ndwi``, ``exg``: numbers, ``+ - * /``, comparisons,
        ``and``, ``or``, ``not`` (element-wise). Example: ``"b1 > 120 and ndvi < 0.2"``.
    data
        ``(band, y, x)`` raw band values.

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` bool.

    Raises
    ------
    ConfigError
        See :func:`parse_expression`; also when the expression is not boolean.

    Examples
    --------
    >>> d = np.array([[[100, 130]], [[5, 5]]], np.uint8)
    >>> evaluate_expression("b1 > 120", d).tolist()
    [[False, True]]
    >>> evaluate_expression("b1 + b2 > 120 and not b2 > 10", d).tolist()
    [[False, True]]
    """
    tree = parse_expression(expr, int(data.shape[0]))
    cache: dict[str, Any] = {}

    def name(n: str) -> Any:
        if n not in cache:
            cache[n] = (compute_index(data, n) if n in _INDEX_BANDS
                        else data[int(n[1:]) - 1].astype(np.float32))
        return cache[n]

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return name(node.id)
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return np.logical_not(v) if isinstance(node.op, ast.Not) else (
                -v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp):
            with np.errstate(divide="ignore", invalid="ignore"):
                return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.BoolOp):
            join = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = ev(node.values[0])
            for v in node.values[1:]:
                out = join(out, ev(v))
            return out
        if isinstance(node, ast.Compare):
            out, left = None, ev(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = ev(comp)
                step = _COMPARE[type(op)](left, right)
                out = step if out is None else np.logical_and(out, step)
                left = right
            return out
        raise ConfigError(f"expression {expr!r}: cannot evaluate {type(node).__name__}")

    result = np.asarray(ev(tree))
    if result.dtype != np.bool_:
        raise ConfigError(
            f"expression {expr!r} is not a condition (it gives numbers); compare it, "
            "e.g. \"ndvi > 0.3\"",
            expression=expr,
        )
    return np.broadcast_to(result, data.shape[1:]).copy()


# ------------------------------------------------------------------ global fits


def fit_otsu(values: NDArray[Any]) -> float:
    """Otsu's threshold of a 1-D sample (finite values only).

    Raises
    ------
    ConfigError
        Fewer than two distinct finite values.

    Examples
    --------
    >>> v = np.r_[np.full(50, 10.0), np.full(50, 200.0)]
    >>> 10 <= fit_otsu(v) < 200
    True
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2 or v.min() == v.max():
        raise ConfigError(
            "Otsu needs a sample with at least two distinct values; the scene's sample "
            "is constant, pass an explicit threshold instead",
        )
    return float(threshold_otsu(v, nbins=256))  # type: ignore[no-untyped-call]


def normalize_bands(data: NDArray[Any], low: Floats, high: Floats) -> Floats:
    """``(band, y, x)`` scaled so that ``low -> 0`` and ``high -> 1`` per band, clipped.

    ``low``/``high`` are global per-band ranges (e.g. the 2nd and 98th
    percentiles of a scene sample), so every window is scaled alike.
    """
    span = np.where(high > low, high - low, 1).astype(np.float32)
    out: Floats = (data.astype(np.float32) - low[:, None, None]) / span[:, None, None]
    return np.clip(out, np.float32(0.0), np.float32(1.0))


def fit_kmeans(samples: Floats, k: int, *, seed: int = 0) -> Floats:
    """k-means centres of ``samples`` ``(n, features)`` (Lloyd's, k-means++ start).

    Centres are sorted by the sum of their features (dark to bright), so the
    cluster numbering does not depend on the random start.

    Raises
    ------
    ConfigError
        ``k`` outside ``2..254`` or fewer distinct samples than ``k``.
    """
    from scipy.cluster.vq import kmeans2

    if not 2 <= k <= 254:
        raise ConfigError(f"k must be in 2..254, got {k}; e.g. --k 5", k=k)
    x = np.asarray(samples, np.float64)
    if len(np.unique(x, axis=0)) < k:
        raise ConfigError(
            f"the scene sample has fewer than k={k} distinct colours; use a smaller k", k=k
        )
    centres, _ = kmeans2(x, k, iter=30, minit="++", seed=seed)
    ordered: Floats = np.asarray(centres, np.float32)
    return ordered[np.argsort(ordered.sum(axis=1), kind="stable")]


def apply_kmeans(features: Floats, centres: Floats) -> NDArray[np.uint8]:
    """Index of the nearest centre for ``features`` ``(f, y, x)``: ``(y, x)`` uint8.

    Examples
    --------
    >>> c = np.array([[0.0], [1.0]], np.float32)
    >>> apply_kmeans(np.array([[[0.1, 0.9]]], np.float32), c).tolist()
    [[0, 1]]
    """
    f = features.reshape(features.shape[0], -1).T
    d2 = (f * f).sum(1)[:, None] - 2 * f @ centres.T + (centres * centres).sum(1)[None, :]
    return np.asarray(d2.argmin(axis=1).astype(np.uint8).reshape(features.shape[1:]))


# ------------------------------------------------------------------ SLIC


def slic_step_px(segment_size_m2: float, pixel_area_m2: float) -> int:
    """Seed spacing of SLIC in pixels for a target mean segment area.

    Examples
    --------
    >>> slic_step_px(50.0, 0.25)
    14
    """
    if not (segment_size_m2 > 0 and math.isfinite(segment_size_m2)):
        raise ConfigError(
            f"segment_size_m2 must be a positive area in m², got {segment_size_m2}; e.g. 50",
            segment_size_m2=segment_size_m2,
        )
    return max(2, round(math.sqrt(segment_size_m2 / pixel_area_m2)))


def slic_window(
    features: Floats, step_px: int, *, compactness: float, lab: bool
) -> NDArray[np.int64]:
    """SLIC labels ``1..n`` of one window whose seeds sit on a scene-wide lattice.

    Parameters
    ----------
    features
        ``(f, y, x)`` in ``[0, 1]`` (globally normalized, :func:`normalize_bands`).
        ``y`` and ``x`` must be multiples of ``step_px`` and the window must
        start on a multiple of ``step_px`` in scene pixels: skimage then places
        one seed at ``(i + 1/2) * step_px`` of every cell, the same scene
        positions in every window, so two windows that overlap by a few steps
        agree away from their edges.
    step_px
        Seed spacing (:func:`slic_step_px`).
    compactness
        SLIC's compactness (colour vs. space weight; higher is squarer).
    lab
        Convert 3 features (RGB) to CIELAB first, as SLIC's authors do.

    Notes
    -----
    skimage rescales every window to its own min..max; the window's first two
    pixels (a corner, far from any chunk core) are pinned to 0 and 1 so that
    the rescale is the identity and every window is scaled alike.
    """
    from skimage.segmentation import slic

    f, h, w = features.shape
    if h % step_px or w % step_px:
        raise ConfigError(f"SLIC window {h}x{w} is not a multiple of the step {step_px} px")
    img = np.ascontiguousarray(np.moveaxis(features, 0, -1), dtype=np.float64)
    img[0, 0, :] = 0.0
    img[0, 1, :] = 1.0
    n = (h // step_px) * (w // step_px)
    labels = slic(
        img, n_segments=n, compactness=compactness, channel_axis=-1,
        convert2lab=lab and f == 3, start_label=1, enforce_connectivity=True,
    )
    return np.asarray(labels, np.int64)


def mean_by_label(
    labels: NDArray[Any], values: NDArray[Any], n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-label ``(count, sum per band)`` of ``values`` ``(band, y, x)`` for ids ``1..n``.

    Returns ``count`` ``(n,)`` and ``sums`` ``(band, n)``; label 0 is skipped.
    """
    flat = labels.ravel().astype(np.int64)
    count = np.bincount(flat, minlength=n + 1)[1 : n + 1].astype(np.float64)
    sums = np.zeros((len(values), n), np.float64)
    for i, b in enumerate(values):
        weights = b.ravel().astype(np.float64)
        sums[i] = np.bincount(flat, weights=weights, minlength=n + 1)[1 : n + 1]
    return count, sums



def lattice_markers(shape: tuple[int, int], step_px: int) -> NDArray[np.int32]:
    """Markers ``1..n`` at ``(i + 1/2) * step_px`` of every lattice cell of a window.

    Like SLIC's seeds: for a window that starts on a multiple of ``step_px`` in
    scene pixels, the markers sit at the same scene positions in every window.

    Examples
    --------
    >>> lattice_markers((4, 6), 2)
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 0, 2, 0, 3],
           [0, 0, 0, 0, 0, 0],
           [0, 4, 0, 5, 0, 6]], dtype=int32)
    """
    markers = np.zeros(shape, np.int32)
    cells = markers[step_px // 2 :: step_px, step_px // 2 :: step_px]
    cells[...] = np.arange(1, cells.size + 1, dtype=np.int32).reshape(cells.shape)
    return markers


def watershed_window(
    features: Floats, step_px: int, *, compactness: float
) -> NDArray[np.int64]:
    """Compact watershed of one window's colour gradient from markers on the scene lattice.

    Parameters
    ----------
    features
        ``(f, y, x)`` in ``[0, 1]`` (globally normalized, :func:`normalize_bands`);
        the window starts on a multiple of ``step_px`` in scene pixels.
    step_px
        Marker spacing (:func:`slic_step_px`).
    compactness
        skimage's compact-watershed weight of the distance to the marker against
        the gradient (Sobel magnitude, mean over bands, in ``[0, ~1.4]``); 0 gives
        a plain watershed.

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` labels ``1..n``.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    gradient = np.mean([sobel(band) for band in features], axis=0)  # type: ignore[no-untyped-call]
    markers = lattice_markers(features.shape[1:], step_px)
    labels = watershed(gradient, markers, compactness=compactness)  # type: ignore[no-untyped-call]
    return np.asarray(labels, np.int64)


def felzenszwalb_window(
    features: Floats, *, scale: float, min_size_px: int, sigma: float = 0.5
) -> NDArray[np.int64]:
    """Felzenszwalb-Huttenlocher graph segmentation of one window: labels ``1..n``.

    Parameters
    ----------
    features
        ``(f, y, x)`` in ``[0, 1]`` (globally normalized, :func:`normalize_bands`).
    scale
        Higher gives larger segments (skimage's ``scale``).
    min_size_px
        Smaller components are merged into a neighbour.
    sigma
        Gaussian pre-smoothing, pixels.
    """
    from skimage.segmentation import felzenszwalb

    img = np.ascontiguousarray(np.moveaxis(features, 0, -1), dtype=np.float64)
    labels = felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size_px, channel_axis=-1)
    return np.asarray(labels, np.int64) + 1


def canny_window(
    features: Floats, *, sigma_px: float, low: float, high: float
) -> NDArray[np.bool_]:
    """Canny edges of one window's grey level (mean of the normalized bands).

    Parameters
    ----------
    features
        ``(f, y, x)`` in ``[0, 1]`` (globally normalized, :func:`normalize_bands`).
    sigma_px
        Gaussian smoothing before the gradient, pixels.
    low, high
        Hysteresis thresholds on the Sobel magnitude of the smoothed grey level
        (absolute, the same in every window; a unit step of the grey level
        gives 4).

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` bool, one-pixel-wide edges.
    """
    from skimage.feature import canny

    grey = np.asarray(features.mean(axis=0), np.float64)
    edges = canny(grey, sigma=sigma_px, low_threshold=low,  # type: ignore[no-untyped-call]
                  high_threshold=high, mode="reflect")
    return np.asarray(edges, bool)
