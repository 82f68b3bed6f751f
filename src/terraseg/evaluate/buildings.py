"""Building scores: the SpaceNet rule, one-to-one matches at IoU >= 0.5.

Predicted and true polygons (metres) are matched one-to-one, greedily by
decreasing IoU, a pair counting when its IoU is at least the threshold
(:func:`terraseg.core.match.match_polygons`; candidates come from an STRtree,
never all pairs). Precision = TP / predicted, recall = TP / true, F1, and the
mean IoU of the matched pairs (:func:`score_buildings`).

Empty inputs follow SpaceNet: when the truth is empty the scores are 0 (F1 = 0),
unless the prediction is empty too, in which case they are all 1.0. Precision is 0
for an empty prediction against a non-empty truth; the mean IoU is 0 when nothing
matched. Pure module: numpy and shapely; opens no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.core.match import match_polygons
from terraseg.errors import ConfigError
from terraseg.evaluate.apls import _prf

__all__ = ["BuildingScores", "rank_buildings", "score_buildings"]

SCORE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Score thresholds of :attr:`BuildingScores.f1_by_score`."""

Geoms: TypeAlias = "NDArray[np.object_]"


@dataclass(frozen=True)
class BuildingScores:
    """Building detection scores (SpaceNet: one-to-one matches at IoU >= threshold).

    Attributes
    ----------
    n_pred, n_truth
        Buildings on each side after the ``min_area_m2`` filter.
    tp
        Matched pairs; FP = ``n_pred - tp``, FN = ``n_truth - tp``.
    precision, recall, f1
        With the empty rules of the module docstring.
    mean_iou
        Mean IoU of the matched pairs (0 when none; 1 when both sides are empty).
    iou_threshold, min_area_m2
        The settings used.
    ap
        Average precision at ``iou_threshold`` over the predictions ranked by
        score (:func:`rank_buildings`); None when the prediction has no scores.
    f1_by_score
        ``((threshold, F1), ...)``: F1 of the predictions whose score is at least
        each threshold; empty without scores.
    """

    n_pred: int
    n_truth: int
    tp: int
    precision: float
    recall: float
    f1: float
    mean_iou: float
    iou_threshold: float
    min_area_m2: float
    ap: float | None = None
    f1_by_score: tuple[tuple[float, float], ...] = ()

    @property
    def fp(self) -> int:
        """Unmatched predictions."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Unmatched true buildings."""
        return self.n_truth - self.tp

    def to_dict(self) -> dict[str, float | int | None | dict[str, float]]:
        """A JSON-ready dict."""
        return {
            "n_pred": self.n_pred,
            "n_truth": self.n_truth,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_iou": self.mean_iou,
            "iou_threshold": self.iou_threshold,
            "min_area_m2": self.min_area_m2,
            "ap": self.ap,
            "f1_by_score": {f"{s:g}": f for s, f in self.f1_by_score},
        }


def _building_scores(
    pred: Geoms, truth: Geoms, iou_threshold: float, min_area_m2: float
) -> tuple[BuildingScores, Geoms, Geoms]:
    """Scores, false-positive and false-negative polygons (metres)."""
    if not (0 < iou_threshold <= 1):
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not (min_area_m2 >= 0 and math.isfinite(min_area_m2)):
        raise ConfigError(f"min_area_m2 must be a finite number >= 0, got {min_area_m2}")
    pred = pred[shapely.area(pred) >= min_area_m2] if len(pred) else pred
    truth = truth[shapely.area(truth) >= min_area_m2] if len(truth) else truth
    m = match_polygons(pred, truth, iou_threshold=iou_threshold)
    tp = len(m.iou)
    p, r, f1 = _prf(tp, len(pred), tp, len(truth))
    mean_iou = float(m.iou.mean()) if tp else (1.0 if not len(pred) and not len(truth) else 0.0)
    fp = np.delete(pred, m.pred_index) if len(pred) else pred
    fn = np.delete(truth, m.truth_index) if len(truth) else truth
    scores = BuildingScores(
        len(pred), len(truth), tp, p, r, f1, mean_iou, iou_threshold, min_area_m2
    )
    return scores, fp, fn


def score_buildings(
    pred: Sequence[Any] | Geoms,
    truth: Sequence[Any] | Geoms,
    *,
    iou_threshold: float = 0.5,
    min_area_m2: float = 0.0,
) -> BuildingScores:
    """Building precision, recall, F1 and mean IoU (SpaceNet rule).

    Parameters
    ----------
    pred, truth
        Valid (Multi)Polygons in one CRS whose units are metres.
    iou_threshold
        A predicted and a true building match when their IoU is at least this.
    min_area_m2
        Polygons smaller than this (m²) are removed from BOTH sides first.

    Examples
    --------
    >>> from shapely import box
    >>> s = score_buildings([box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(2, 0, 12, 10)])
    >>> s.tp, s.fp, s.fn, round(s.mean_iou, 4), round(s.f1, 4)
    (1, 1, 0, 0.6667, 0.6667)
    """
    return _building_scores(
        np.asarray(pred, object), np.asarray(truth, object), iou_threshold, min_area_m2
    )[0]


def rank_buildings(
    pred: Geoms,
    scores: NDArray[np.floating],
    truth: Geoms,
    *,
    iou_threshold: float = 0.5,
    thresholds: Sequence[float] = SCORE_THRESHOLDS,
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """Average precision and F1 per score threshold of scored building predictions.

    AP follows PASCAL VOC / COCO at one IoU threshold: predictions are taken by
    decreasing score, each matched to the unmatched true building it overlaps
    most (IoU at least ``iou_threshold``), and AP is the area under the
    precision-recall curve with precision made monotone (all-point
    interpolation). F1 at threshold ``s`` scores the predictions with score
    ``>= s`` by the one-to-one SpaceNet rule of :func:`score_buildings`.

    Examples
    --------
    >>> from shapely import box
    >>> pred = np.array([box(0, 0, 10, 10), box(20, 0, 30, 10)], object)
    >>> truth = np.array([box(0, 0, 10, 10)], object)
    >>> ap, f1 = rank_buildings(pred, np.array([0.9, 0.2]), truth, thresholds=(0.0, 0.5))
    >>> ap, f1
    (1.0, ((0.0, 0.6666666666666666), (0.5, 1.0)))
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    pred = pred[order]
    ranked = np.asarray(scores, np.float64)[order]
    f1s = tuple(
        (float(s), _building_scores(pred[ranked >= s], truth, iou_threshold, 0.0)[0].f1)
        for s in thresholds
    )
    if not len(truth):
        return (1.0 if not len(pred) else 0.0), f1s
    tp = np.zeros(len(pred), bool)
    if len(pred):
        pi, ti = shapely.STRtree(truth).query(pred, predicate="intersects")
        inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
        iou = inter / (shapely.area(pred[pi]) + shapely.area(truth[ti]) - inter)
        keep = iou >= iou_threshold
        pi, ti, iou = pi[keep], ti[keep], iou[keep]
        used: set[int] = set()
        by_pred = np.argsort(pi, kind="stable")
        starts = np.searchsorted(pi[by_pred], np.arange(len(pred) + 1))
        for k in range(len(pred)):  # in score order: the best free truth each
            cand = by_pred[starts[k] : starts[k + 1]]
            for j in cand[np.argsort(-iou[cand], kind="stable")]:
                if int(ti[j]) not in used:
                    used.add(int(ti[j]))
                    tp[k] = True
                    break
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(pred) + 1)
    recall = ctp / len(truth)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(pred) else precision
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision)), f1s
