"""One-to-one matching of predicted to true polygons by IoU (pure shapely).

Both building evaluation (:mod:`terraseg.evaluate.scores`) and the vectorizer's
checks use it, so it lives in the core both may import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["PolygonMatch", "match_polygons"]

Geoms: TypeAlias = "NDArray[np.object_]"



@dataclass(frozen=True)
class PolygonMatch:
    """Greedy one-to-one matching of predicted to true polygons by IoU.

    Attributes
    ----------
    pred_index, truth_index
        Positions of the matched pairs (IoU at least the threshold).
    iou
        IoU of each matched pair.
    n_pred, n_truth
        Number of predicted and true polygons.
    """

    pred_index: NDArray[np.int64]
    truth_index: NDArray[np.int64]
    iou: NDArray[np.float64]
    n_pred: int
    n_truth: int

    @property
    def precision(self) -> float:
        """Matched / predicted (1.0 when nothing was predicted)."""
        return len(self.iou) / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        """Matched / true (1.0 when there is no truth)."""
        return len(self.iou) / self.n_truth if self.n_truth else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match_polygons(
    pred: Sequence[Any] | Geoms, truth: Sequence[Any] | Geoms, *, iou_threshold: float = 0.5
) -> PolygonMatch:
    """Match predicted to true polygons one-to-one, greedily by decreasing IoU.

    Both must be in the same CRS. Candidate pairs come from an STRtree on ``truth``.

    Examples
    --------
    >>> from shapely import box
    >>> m = match_polygons([box(0, 0, 2, 2), box(5, 5, 6, 6)], [box(0, 0, 2, 1.8)])
    >>> m.pred_index.tolist(), round(float(m.iou[0]), 2), m.f1
    ([0], 0.9, 0.6666666666666666)
    """
    p = np.asarray(pred, object)
    t = np.asarray(truth, object)
    empty = PolygonMatch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), len(p), len(t))
    if len(p) == 0 or len(t) == 0:
        return empty
    pi, ti = shapely.STRtree(t).query(p, predicate="intersects")
    if len(pi) == 0:
        return empty
    inter = shapely.area(shapely.intersection(p[pi], t[ti]))
    iou = inter / (shapely.area(p[pi]) + shapely.area(t[ti]) - inter)
    order = np.argsort(-iou, kind="stable")
    used_p: set[int] = set()
    used_t: set[int] = set()
    rows = []
    for k in order:
        if iou[k] < iou_threshold:
            break
        a, b = int(pi[k]), int(ti[k])
        if a in used_p or b in used_t:
            continue
        used_p.add(a)
        used_t.add(b)
        rows.append(k)
    sel = np.asarray(rows, np.int64)
    return PolygonMatch(
        pi[sel].astype(np.int64), ti[sel].astype(np.int64), iou[sel], len(p), len(t)
    )
