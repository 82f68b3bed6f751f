"""Road metrics: length-weighted F1 within a buffer, and APLS (SpaceNet 3).

:func:`score_roads` measures centerlines (metres): precision is the share of the
predicted length within ``buffer_m`` of a true line, recall the share of the true
length within ``buffer_m`` of a predicted line. It also computes APLS, the
Average Path Length Similarity of the two road graphs, implemented from its
definition in Van Etten, Lindenbaum & Bacastow (2018),
"SpaceNet: A Remote Sensing Dataset and Challenge Series" (arXiv:1807.01232),
not from SpaceNet's code:

.. math::

    C(G \\to G') = 1 - \\frac{1}{N} \\sum_{(a, b)}
        \\min\\left(1, \\frac{|L(a, b) - L(a', b')|}{L(a, b)}\\right)

where ``(a, b)`` runs over ``N`` pairs of control nodes of the source graph ``G``
joined by a path of length ``L(a, b) > 0``, and ``a'``, ``b'`` are ``a``, ``b``
snapped onto the target graph ``G'``. A pair whose ``a'`` or ``b'`` does not exist
(no edge of ``G'`` within ``snap_m``), or whose ``a'`` and ``b'`` are not connected
in ``G'``, costs the maximum, 1.

What this module fixes where the paper leaves a choice:

- **Graphs.** :func:`lines_to_graph` (in :mod:`terraseg.evaluate.graphs`, re-exported
  here) builds a ``networkx.MultiGraph`` from LineStrings in a metric CRS: line
  endpoints closer than ``node_snap_m`` become one node (at their mean), an
  endpoint within ``node_snap_m`` of another line's interior splits that line
  there (a T junction); lines that cross with no endpoint at the crossing are not
  joined (over/underpasses). Edge ``length`` is the line's length in metres.
- **Control nodes.** Every graph node, plus nodes injected along each edge every
  ``spacing_m`` metres from its first end (none closer than ``spacing_m / 10`` to
  its last end), as in the paper's 50 m "midpoints".
- **Snapping.** Each source control node is projected onto the nearest edge of
  the target graph within ``snap_m`` (for a node injected along an edge, the
  nearest counting ``snap_m * (1 - |cos|)`` extra for the angle between the two
  roads, so that at a crossing it stays on its own road); a node is inserted in the
  target graph there (or the edge's end node is used, when the projection falls
  within 1 mm of it) and that node is ``a'``. Paths are then measured in the
  target graph with all these insertions (which do not change its lengths);
  ``|L(a, b) - L(a', b')|`` under 1 mm counts as 0 (floating-point noise).
- **Pairs.** All unordered pairs of control nodes joined in ``G`` when there are at
  most ``max_pairs``; otherwise a seeded sample: ``ceil(sqrt(max_pairs))`` source
  nodes drawn without replacement, each paired with up to
  ``max_pairs // n_sources`` other control nodes drawn without replacement (pairs
  not joined in ``G`` are then dropped). The same ``seed`` gives the same value.
- **Symmetry.** APLS is the harmonic mean of ``C(truth → pred)`` (penalises
  missing roads and broken or lengthened paths) and ``C(pred → truth)``
  (penalises spurious roads), as the SpaceNet 3 scoring did; 0 if either is 0.
- **Empty graphs.** Both empty: 1.0. One empty: 0.0. A source graph with no
  pair of joined control nodes (a single point) gives ``C = 1``.

Shortest paths use :func:`scipy.sparse.csgraph.dijkstra` on the networkx graph's
edges (the lightest of parallel edges). Empty inputs follow SpaceNet's rule
(:func:`_prf`). Pure module: numpy, scipy, shapely, networkx; opens no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import networkx as nx
import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.sparse import csgraph

from terraseg.errors import ConfigError
from terraseg.evaluate.graphs import _EPS_M, _Arrays, lines_to_graph

__all__ = [
    "AplsResult",
    "RoadScores",
    "apls",
    "lines_to_graph",
    "path_length_similarity",
    "score_roads",
]

Geoms: TypeAlias = "NDArray[np.object_]"


# --------------------------------------------------------------------------- control nodes


def _direction(geoms: Geoms, d: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit direction of each line at distance ``d`` along it (over +-0.5 m)."""
    a = shapely.get_coordinates(shapely.line_interpolate_point(geoms, np.maximum(d - 0.5, 0)))
    b = shapely.get_coordinates(
        shapely.line_interpolate_point(geoms, np.minimum(d + 0.5, shapely.length(geoms)))
    )
    v = b - a
    norm = np.hypot(v[:, 0], v[:, 1])[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, v / norm, np.nan)


def _inject(g: _Arrays, spacing_m: float) -> NDArray[np.float64]:
    """Add control nodes every ``spacing_m`` along each edge (none within spacing/10 of its end).

    Returns the ``(n, 2)`` unit direction of the edge at each node (NaN for the
    graph's own nodes, junctions and ends, where there is no single direction).
    """
    cuts: dict[int, list[tuple[float, int]]] = {}
    dirs = [np.full((g.n, 2), np.nan)]
    for e in range(len(g.u)):
        length = float(g.length[e])
        d = np.arange(spacing_m, length - spacing_m / 10.0, spacing_m)
        if not len(d):
            continue
        geom = np.full(len(d), g.geom[e], object)
        pts = shapely.get_coordinates(shapely.line_interpolate_point(geom, d))
        nodes = g.add_nodes(pts)
        dirs.append(_direction(geom, d))
        cuts[e] = list(zip(d.tolist(), nodes.tolist(), strict=True))
    g.split(cuts)
    return np.concatenate(dirs)


def _snap(
    points: NDArray[np.float64], direction: NDArray[np.float64], g: _Arrays, snap_m: float
) -> NDArray[np.int64]:
    """Node of ``g`` for each point: inserted on the best edge within ``snap_m``, or -1.

    The best edge is the nearest one, except that a point with a ``direction`` (a
    control node injected along an edge) prefers edges running the same way:
    candidates are ranked by ``distance + snap_m * (1 - |cos(angle)|)``, so that at a
    crossing each road's control nodes stay on that road.
    """
    out = np.full(len(points), -1, np.int64)
    has_geom = np.flatnonzero(np.asarray([x is not None for x in g.geom], bool))
    if not len(points) or not len(has_geom):
        return out
    pts = shapely.points(points)
    geoms = g.geom[has_geom]
    pi, ki = shapely.STRtree(geoms).query(pts, predicate="dwithin", distance=snap_m)
    if not len(pi):
        return out
    dist = shapely.distance(pts[pi], geoms[ki])
    along = shapely.line_locate_point(geoms[ki], pts[pi])
    cos = np.abs(np.sum(direction[pi] * _direction(geoms[ki], along), axis=1))
    score = dist + np.where(np.isnan(cos), 0.0, snap_m * (1.0 - cos))
    order = np.lexsort((ki, score, pi))
    first = np.ones(len(order), bool)
    first[1:] = pi[order][1:] != pi[order][:-1]
    best = order[first]
    cuts: dict[int, list[tuple[float, int]]] = {}
    placed: dict[tuple[int, float], int] = {}
    for p, k, d in zip(pi[best].tolist(), ki[best].tolist(), along[best].tolist(), strict=True):
        e = int(has_geom[k])
        if d <= _EPS_M:
            out[p] = g.u[e]
        elif d >= g.length[e] - _EPS_M:
            out[p] = g.v[e]
        else:
            key = (e, round(d / _EPS_M))
            if key not in placed:
                xy = shapely.get_coordinates(shapely.line_interpolate_point(g.geom[e], d))
                placed[key] = int(g.add_nodes(xy)[0])
                cuts.setdefault(e, []).append((d, placed[key]))
            out[p] = placed[key]
    g.split(cuts)
    return out


# --------------------------------------------------------------------------- APLS


def _pairs(n: int, max_pairs: int, rng: np.random.Generator) -> tuple[NDArray[np.int64], ...]:
    """``(sources, pair_source_row, pair_target)``: the node pairs to measure."""
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.arange(n, dtype=np.int64), i.astype(np.int64), j.astype(np.int64)
    k = min(n, math.ceil(math.sqrt(max_pairs)))
    m = min(n - 1, max(1, max_pairs // k))
    sources = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    rows, targets = [], []
    for r, s in enumerate(sources.tolist()):
        t = rng.choice(n - 1, size=m, replace=False)
        t[t >= s] += 1
        rows.append(np.full(m, r, np.int64))
        targets.append(t.astype(np.int64))
    return sources, np.concatenate(rows), np.concatenate(targets)


def path_length_similarity(
    source: nx.MultiGraph | nx.Graph,
    target: nx.MultiGraph | nx.Graph,
    *,
    spacing_m: float = 50.0,
    snap_m: float = 4.0,
    max_pairs: int = 10_000,
    seed: int = 0,
) -> tuple[float, int]:
    """One direction of APLS, ``C(source → target)``, and the number of pairs measured.

    Both graphs in the same metric CRS (node ``x``, ``y`` and edge ``geometry`` in
    metres; an edge without geometry is the straight segment between its nodes;
    lengths are the geometries' lengths). See the module docstring for the
    definition, control nodes, snapping and pair sampling.
    """
    for name, value in (("spacing_m", spacing_m), ("snap_m", snap_m)):
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a positive number of metres, got {value}")
    if max_pairs < 1:
        raise ConfigError(f"max_pairs must be >= 1, got {max_pairs}", max_pairs=max_pairs)
    src = _Arrays.from_networkx(source)
    tgt = _Arrays.from_networkx(target)
    direction = _inject(src, spacing_m)
    if src.n < 2:
        return 1.0, 0
    sources, row, other = _pairs(src.n, max_pairs, np.random.default_rng(seed))
    d_src = csgraph.dijkstra(src.csr(), directed=False, indices=sources)
    length = d_src[row, other]
    ok = np.isfinite(length) & (length > 0)
    row, other, length = row[ok], other[ok], length[ok]
    if not len(length):
        return 1.0, 0
    snapped = _snap(src.xy, direction, tgt, snap_m)
    a, b = snapped[sources[row]], snapped[other]
    cost = np.ones(len(length))
    found = (a >= 0) & (b >= 0)
    if found.any():
        starts, inv = np.unique(a[found], return_inverse=True)
        d_tgt = csgraph.dijkstra(tgt.csr(), directed=False, indices=starts)
        other_len = d_tgt[inv, b[found]]
        diff = np.abs(length[found] - other_len)
        diff[diff < _EPS_M] = 0.0  # floating-point noise of the edge splitting
        cost[found] = np.minimum(1.0, diff / length[found])
    return float(1.0 - cost.mean()), int(len(cost))


@dataclass(frozen=True)
class AplsResult:
    """APLS of a predicted road graph against the truth.

    Attributes
    ----------
    apls
        Harmonic mean of the two directions (0 if either is 0).
    truth_to_pred, pred_to_truth
        ``C(truth → pred)`` and ``C(pred → truth)``.
    n_pairs_truth, n_pairs_pred
        Control-node pairs measured in each direction.
    """

    apls: float
    truth_to_pred: float
    pred_to_truth: float
    n_pairs_truth: int
    n_pairs_pred: int

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return {
            "apls": self.apls,
            "apls_truth_to_pred": self.truth_to_pred,
            "apls_pred_to_truth": self.pred_to_truth,
            "apls_pairs_truth": self.n_pairs_truth,
            "apls_pairs_pred": self.n_pairs_pred,
        }


def apls(
    truth: nx.MultiGraph | nx.Graph,
    pred: nx.MultiGraph | nx.Graph,
    *,
    spacing_m: float = 50.0,
    snap_m: float = 4.0,
    max_pairs: int = 10_000,
    seed: int = 0,
) -> AplsResult:
    """Average Path Length Similarity of ``pred`` against ``truth`` (SpaceNet 3).

    Parameters
    ----------
    truth, pred
        Road graphs in the same metric CRS (e.g. from :func:`lines_to_graph`).
    spacing_m
        Control nodes are injected along edges at this spacing (metres).
    snap_m
        A control node snaps to the other graph's nearest edge within this distance
        (metres); farther, it is missing and every pair it is in costs 1.
    max_pairs
        Pairs per direction above which pairs are sampled (seeded).
    seed
        Seed of the pair sampling.

    Returns
    -------
    AplsResult
        ``apls`` = harmonic mean of ``C(truth → pred)`` and ``C(pred → truth)``;
        1.0 when both graphs have no edges, 0.0 when exactly one has none.

    Examples
    --------
    >>> from shapely import LineString
    >>> t = lines_to_graph([LineString([(0, 0), (100, 0)])])
    >>> p = lines_to_graph([LineString([(0, 0), (50, 40), (100, 0)])])  # ~28 % longer
    >>> r = apls(t, p, spacing_m=1000)
    >>> round(r.truth_to_pred, 3), round(r.pred_to_truth, 3)
    (0.719, 0.781)
    """
    kw: dict[str, Any] = {
        "spacing_m": spacing_m,
        "snap_m": snap_m,
        "max_pairs": max_pairs,
        "seed": seed,
    }
    empty_t, empty_p = truth.number_of_edges() == 0, pred.number_of_edges() == 0
    if empty_t or empty_p:
        value = 1.0 if (empty_t and empty_p) else 0.0
        return AplsResult(value, value, value, 0, 0)
    c_tp, n_tp = path_length_similarity(truth, pred, **kw)
    c_pt, n_pt = path_length_similarity(pred, truth, **kw)
    hm = 2 * c_tp * c_pt / (c_tp + c_pt) if c_tp > 0 and c_pt > 0 else 0.0
    return AplsResult(hm, c_tp, c_pt, n_tp, n_pt)


def _prf(tp_pred: float, n_pred: float, tp_truth: float, n_truth: float) -> tuple[float, ...]:
    """``(precision, recall, f1)`` with SpaceNet's empty rules (see module docstring)."""
    if n_pred == 0 and n_truth == 0:
        return 1.0, 1.0, 1.0
    p = tp_pred / n_pred if n_pred else 0.0
    r = tp_truth / n_truth if n_truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


# --------------------------------------------------------------------------- length F1


@dataclass(frozen=True)
class RoadScores:
    """Road centerline scores.

    Attributes
    ----------
    pred_length_m, truth_length_m
        Total centerline lengths (metres).
    pred_matched_m
        Predicted length within ``buffer_m`` of a true line.
    truth_matched_m
        True length within ``buffer_m`` of a predicted line.
    precision, recall, f1
        ``pred_matched_m / pred_length_m``, ``truth_matched_m / truth_length_m``, their
        harmonic mean (empty rules of the module docstring).
    buffer_m
        The buffer used.
    apls
        APLS and its two directions (:func:`apls`).
    """

    pred_length_m: float
    truth_length_m: float
    pred_matched_m: float
    truth_matched_m: float
    precision: float
    recall: float
    f1: float
    buffer_m: float
    apls: AplsResult

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return {
            "pred_length_m": self.pred_length_m,
            "truth_length_m": self.truth_length_m,
            "pred_matched_m": self.pred_matched_m,
            "truth_matched_m": self.truth_matched_m,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "buffer_m": self.buffer_m,
            **self.apls.to_dict(),
        }


def _coverage(lines: Geoms, other: Geoms, buffer_m: float) -> tuple[float, Geoms]:
    """Length of ``lines`` within ``buffer_m`` of ``other``, and the parts outside."""
    if not len(lines):
        return 0.0, lines
    if not len(other):
        return 0.0, lines
    li, oi = shapely.STRtree(other).query(lines, predicate="dwithin", distance=buffer_m)
    missed = lines.copy()
    if not len(li):
        return 0.0, missed
    order = np.argsort(li, kind="stable")
    li, oi = li[order], oi[order]
    near, start = np.unique(li, return_index=True)
    used = np.unique(oi)
    buf = np.empty(len(other), object)
    buf[used] = shapely.buffer(other[used], buffer_m)
    zones = np.asarray([shapely.union_all(buf[g]) for g in np.split(oi, start[1:])], object)
    covered = float(shapely.length(shapely.intersection(lines[near], zones)).sum())
    missed[near] = shapely.difference(lines[near], zones)
    missed = missed[~shapely.is_empty(missed)]
    return covered, missed


def _road_scores(
    pred: Geoms, truth: Geoms, buffer_m: float, apls_kw: dict[str, Any]
) -> tuple[RoadScores, Geoms, Geoms]:
    if not (buffer_m > 0 and math.isfinite(buffer_m)):
        raise ConfigError(f"buffer_m must be a positive number of metres, got {buffer_m}")
    node_snap_m = float(apls_kw.pop("node_snap_m", 1.0))
    len_p = float(shapely.length(pred).sum()) if len(pred) else 0.0
    len_t = float(shapely.length(truth).sum()) if len(truth) else 0.0
    cov_p, fp = _coverage(pred, truth, buffer_m)
    cov_t, fn = _coverage(truth, pred, buffer_m)
    cov_p, cov_t = min(cov_p, len_p), min(cov_t, len_t)  # rounding of the intersections
    p, r, f1 = _prf(cov_p, len_p, cov_t, len_t)
    graphs = (lines_to_graph(g, node_snap_m=node_snap_m) for g in (truth, pred))
    result = apls(*graphs, **apls_kw)
    scores = RoadScores(len_p, len_t, cov_p, cov_t, p, r, f1, buffer_m, result)
    return scores, fp, fn


def score_roads(
    pred: Sequence[Any] | Geoms,
    truth: Sequence[Any] | Geoms,
    *,
    buffer_m: float = 2.0,
    node_snap_m: float = 1.0,
    apls_spacing_m: float = 50.0,
    apls_snap_m: float = 4.0,
    apls_max_pairs: int = 10_000,
    seed: int = 0,
) -> RoadScores:
    """Length-weighted precision/recall/F1 of centerlines within a buffer, and APLS.

    Parameters
    ----------
    pred, truth
        (Multi)LineStrings in one CRS whose units are metres.
    buffer_m
        A stretch of line counts as matched within this distance of the other side.
    node_snap_m
        Line ends closer than this are one graph node (:func:`lines_to_graph`).
    apls_spacing_m, apls_snap_m, apls_max_pairs, seed
        APLS control-node spacing, snapping distance, pairs per direction before
        sampling, and the sampling seed (:func:`apls`).

    Examples
    --------
    >>> from shapely import LineString
    >>> s = score_roads([LineString([(0, 1), (50, 1)])], [LineString([(0, 0), (100, 0)])])
    >>> s.precision, round(s.recall, 2)  # 50 m + the round end of the 2 m buffer (~1.7 m)
    (1.0, 0.52)
    """
    kw = {
        "node_snap_m": node_snap_m,
        "spacing_m": apls_spacing_m,
        "snap_m": apls_snap_m,
        "max_pairs": apls_max_pairs,
        "seed": seed,
    }
    p = _lines(np.asarray(pred, object))
    t = _lines(np.asarray(truth, object))
    return _road_scores(p, t, buffer_m, kw)[0]


def _lines(geoms: Geoms) -> Geoms:
    """The LineString parts of ``geoms`` (non-empty)."""
    if not len(geoms):
        return np.empty(0, object)
    parts = shapely.get_parts(geoms[~shapely.is_empty(geoms)])
    return np.asarray(parts[shapely.get_type_id(parts) == shapely.GeometryType.LINESTRING], object)
