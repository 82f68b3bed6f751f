"""Pixel scores: per-class IoU, precision, recall and F1 of two class rasters.

:func:`confusion_matrix` counts one pair of class arrays; :func:`score_pixels`
sums it window by window over two single-band class rasters on the same grid,
never holding a full-scene array, and :class:`PixelScores` derives the scores.
Pixels that are nodata (255, or the file's own nodata) in either raster are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSMismatchError

__all__ = ["CLASS_NAMES", "PixelScores", "confusion_matrix", "score_pixels"]

CLASS_NAMES = {0: "background", 1: "building", 2: "road"}
"""Names of terraseg's class values (others are reported as ``class <n>``)."""


def confusion_matrix(
    pred: NDArray[Any], truth: NDArray[Any], *, nodata: int | None = 255
) -> NDArray[np.int64]:
    """The ``(256, 256)`` confusion matrix of two class arrays (rows truth, cols pred).

    Pixels equal to ``nodata`` in either array are ignored. Values must be
    integers in ``[0, 255]``; sum the matrices of windows to stream a scene.

    Examples
    --------
    >>> cm = confusion_matrix(np.array([[1, 1], [0, 255]]), np.array([[1, 0], [0, 0]]))
    >>> cm[:2, :2].tolist()
    [[1, 1], [0, 1]]
    """
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ConfigError(f"class arrays differ in size: {p.shape} and {t.shape}")
    for a in (p, t):
        if a.size and (a.min() < 0 or a.max() > 255 or not np.all(np.mod(a, 1) == 0)):
            raise ConfigError(
                "class values must be integers in 0-255 (255 = nodata); "
                f"got values in [{a.min()}, {a.max()}]"
            )
    keep = np.ones(p.shape, bool) if nodata is None else (p != nodata) & (t != nodata)
    idx = t[keep].astype(np.int64) * 256 + p[keep].astype(np.int64)
    return np.bincount(idx, minlength=256 * 256).reshape(256, 256).astype(np.int64)


@dataclass(frozen=True, eq=False)
class PixelScores:
    """Per-class pixel scores from a confusion matrix.

    Attributes
    ----------
    confusion
        ``(256, 256)`` counts, rows truth, cols prediction.
    n_ignored
        Pixels skipped as nodata.
    classes
        The classes present on either side, ascending.

    Notes
    -----
    For a class present on either side: IoU = TP / (TP + FP + FN), precision =
    TP / (TP + FP), recall = TP / (TP + FN), a ratio with a zero denominator being 0.
    ``mean_iou`` averages IoU over the present classes, background included;
    ``mean_iou_foreground`` over those other than 0.
    """

    confusion: NDArray[np.int64]
    n_ignored: int
    classes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        present = (self.confusion.sum(0) + self.confusion.sum(1)) > 0
        object.__setattr__(self, "classes", tuple(int(c) for c in np.flatnonzero(present)))

    def per_class(self) -> dict[int, dict[str, float | int]]:
        """``{class: {iou, precision, recall, f1, truth_px, pred_px}}``."""
        cm = self.confusion
        out: dict[int, dict[str, float | int]] = {}
        for c in self.classes:
            tp, n_p, n_t = int(cm[c, c]), int(cm[:, c].sum()), int(cm[c, :].sum())
            union = n_p + n_t - tp
            p = tp / n_p if n_p else 0.0
            r = tp / n_t if n_t else 0.0
            out[c] = {
                "iou": tp / union if union else 0.0,
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "truth_px": n_t,
                "pred_px": n_p,
            }
        return out

    @property
    def n_pixels(self) -> int:
        """Pixels compared (nodata excluded)."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of compared pixels whose class agrees (1.0 when none compared)."""
        n = self.n_pixels
        return float(np.trace(self.confusion)) / n if n else 1.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the present classes (1.0 when none)."""
        ious = [v["iou"] for v in self.per_class().values()]
        return float(np.mean(ious)) if ious else 1.0

    @property
    def mean_iou_foreground(self) -> float:
        """Mean IoU over the present classes other than 0 (1.0 when none)."""
        ious = [v["iou"] for c, v in self.per_class().items() if c != 0]
        return float(np.mean(ious)) if ious else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; classes keyed by name (``CLASS_NAMES`` or ``class <n>``)."""
        return {
            "n_pixels": self.n_pixels,
            "n_ignored": self.n_ignored,
            "accuracy": self.accuracy,
            "mean_iou": self.mean_iou,
            "mean_iou_foreground": self.mean_iou_foreground,
            "classes": {
                CLASS_NAMES.get(c, f"class {c}"): {"value": c, **v}
                for c, v in self.per_class().items()
            },
        }


def _edge_folding(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(edge, building)`` class values when ``path`` has a ``building edge`` class."""
    from terraseg.io.raster_sink import read_class_names

    names = {v: k for k, v in read_class_names(path).items()}
    if "building edge" in names and "building" in names:
        return names["building edge"], names["building"]
    return None


def score_pixels(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    nodata: int | None = 255,
    window_px: int = 1024,
) -> PixelScores:
    """Per-class pixel scores of two single-band class rasters on the same grid.

    Reads both files window by window (``window_px`` square windows), so memory does
    not grow with the scene. Pixels equal to ``nodata`` (or to either file's own
    nodata value) in either raster are ignored. A prediction whose stored class
    names include ``building edge`` (a boundary model's edge ring) is scored with
    that class as ``building``.

    Either raster may come from any tool: striped, tiled or COG, any integer type
    (:func:`terraseg.io.masks.open_mask`).

    Raises
    ------
    SceneReadError
        A file is missing or not a readable raster.
    CRSError
        A file has no CRS.
    BandError
        A file has more than one band or non-integer values.
    ConfigError
        The rasters differ in size or transform (not the same grid).
    CRSMismatchError
        The rasters are in different CRSs.
    """
    from terraseg.io.masks import open_mask

    if window_px < 1:
        raise ConfigError(f"window_px must be >= 1, got {window_px}", window_px=window_px)
    sp, st = open_mask(pred), open_mask(truth)
    if sp.crs != st.crs:
        raise CRSMismatchError(
            f"'{pred}' is in {sp.crs} but '{truth}' is in {st.crs}; resample the prediction "
            f"onto the truth grid (gdalwarp -t_srs {st.crs} -te/-tr of the truth -r near)",
            pred_crs=str(sp.crs),
            truth_crs=str(st.crs),
        )
    if sp.shape != st.shape or not sp.transform.almost_equals(st.transform, precision=1e-9):
        raise ConfigError(
            f"'{pred}' ({sp.shape[0]}x{sp.shape[1]} px, origin {sp.transform.c:.3f}, "
            f"{sp.transform.f:.3f}, pixel {sp.transform.a:g}) and '{truth}' "
            f"({st.shape[0]}x{st.shape[1]} px, origin {st.transform.c:.3f}, {st.transform.f:.3f}, "
            f"pixel {st.transform.a:g}) are not on the same grid; resample the prediction onto "
            "the truth grid (gdalwarp -te/-tr of the truth, -r near)",
            pred_shape=sp.shape,
            truth_shape=st.shape,
        )
    ignore = [float(v) for v in {nodata, sp.nodata, st.nodata} if v is not None]
    fold = _edge_folding(pred)
    cm = np.zeros((256, 256), np.int64)
    ignored = 0
    rows, cols = st.shape
    for r0 in range(0, rows, window_px):
        for c0 in range(0, cols, window_px):
            w = PixelWindow(r0, c0, min(window_px, rows - r0), min(window_px, cols - c0))
            p = sp.read_window(w, bands=[1], pad="nodata")[0][0]
            if fold is not None:  # a boundary model's edge ring is building
                p = np.where(p == fold[0], p.dtype.type(fold[1]), p)
            t = st.read_window(w, bands=[1], pad="nodata")[0][0]
            keep = ~(np.isin(p, ignore) | np.isin(t, ignore))
            cm += confusion_matrix(p[keep], t[keep], nodata=None)
            ignored += w.size - int(keep.sum())
    return PixelScores(cm, ignored)
