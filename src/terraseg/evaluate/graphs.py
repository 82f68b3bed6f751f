"""Road graphs for APLS: LineStrings to a ``networkx.MultiGraph``, and graphs as arrays.

:func:`lines_to_graph` builds the road graph that :mod:`terraseg.evaluate.apls`
measures: line endpoints closer than ``node_snap_m`` become one node (at their
mean), an endpoint within ``node_snap_m`` of another line's interior splits that
line there (a T junction), and lines that cross with no endpoint at the crossing
are not joined (over/underpasses). :class:`_Arrays` holds a graph as flat arrays
(node coordinates, edge ends, lengths and geometries) that APLS splits with its
control nodes and hands to :mod:`scipy.sparse.csgraph`.

Pure module: numpy, scipy, shapely, networkx; opens no file.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import networkx as nx
import numpy as np
import shapely
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from shapely.ops import substring

from terraseg.errors import ConfigError

__all__ = ["lines_to_graph"]

Geoms: TypeAlias = "NDArray[np.object_]"
_EPS_M = 1e-3
"""Lengths and distances below this (metres) are floating-point noise."""


# --------------------------------------------------------------------------- graph


def lines_to_graph(lines: Iterable[Any] | Geoms, *, node_snap_m: float = 1.0) -> nx.MultiGraph:
    """A road graph from LineStrings in a metric CRS (metres).

    Parameters
    ----------
    lines
        LineStrings or MultiLineStrings (exploded into their parts); empty ones and
        parts shorter than 1 mm are ignored.
    node_snap_m
        Endpoints closer than this (chained: single linkage) become one node, placed
        at their mean; an endpoint this close to another line's interior splits it.

    Returns
    -------
    networkx.MultiGraph
        Nodes ``0..n-1`` with ``x``, ``y``; edges with ``length`` (metres) and
        ``geometry`` (LineString from node ``u`` to node ``v``).

    Examples
    --------
    >>> from shapely import LineString
    >>> g = lines_to_graph([LineString([(0, 0), (10, 0)]), LineString([(5, 0.5), (5, 8)])])
    >>> g.number_of_nodes(), sorted(round(d["length"], 2) for *_, d in g.edges(data=True))
    (4, [5.02, 5.02, 7.5])
    """
    if not (node_snap_m >= 0 and math.isfinite(node_snap_m)):
        raise ConfigError(f"node_snap_m must be >= 0, got {node_snap_m}", node_snap_m=node_snap_m)
    geoms = np.asarray(list(lines) if not isinstance(lines, np.ndarray) else lines, object)
    parts = shapely.get_parts(geoms[~shapely.is_empty(geoms)]) if len(geoms) else geoms
    parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.LINESTRING]
    parts = parts[shapely.length(parts) > _EPS_M]
    graph = nx.MultiGraph()
    if not len(parts):
        return graph
    ends = np.concatenate(
        [
            shapely.get_coordinates(shapely.get_point(parts, 0)),
            shapely.get_coordinates(shapely.get_point(parts, -1)),
        ]
    )
    node_of_end, node_xy = _cluster(ends, node_snap_m)
    n = len(parts)
    start_node, end_node = node_of_end[:n], node_of_end[n:]
    snapped = zip(parts, node_xy[start_node], node_xy[end_node], strict=True)
    parts = np.asarray([_snap_ends(g, a, b) for g, a, b in snapped], object)
    # T junctions: node points on the interior of other lines split those lines
    cuts: dict[int, list[tuple[float, int]]] = {}
    pts = shapely.points(node_xy)
    if node_snap_m > 0:
        pi, li = shapely.STRtree(parts).query(pts, predicate="dwithin", distance=node_snap_m)
        for p, line in zip(pi.tolist(), li.tolist(), strict=True):
            if p in (start_node[line], end_node[line]):
                continue
            d = float(shapely.line_locate_point(parts[line], pts[p]))
            if _EPS_M < d < float(shapely.length(parts[line])) - _EPS_M:
                cuts.setdefault(line, []).append((d, p))
    for i, (x, y) in enumerate(node_xy.tolist()):
        graph.add_node(i, x=x, y=y)
    for k in range(n):
        _add_line(graph, parts[k], int(start_node[k]), int(end_node[k]), node_xy, cuts.get(k, []))
    return graph


def _snap_ends(
    line: shapely.LineString, start: NDArray[np.float64], end: NDArray[np.float64]
) -> shapely.LineString:
    xy = shapely.get_coordinates(line)
    xy[0], xy[-1] = start, end
    return shapely.linestrings(xy)


def _cluster(xy: NDArray[np.float64], tol: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Single-linkage clusters of points within ``tol``: ``(cluster of each point, centroids)``."""
    pairs = cKDTree(xy).query_pairs(tol, output_type="ndarray") if tol > 0 else np.empty((0, 2))
    m = len(xy)
    adj = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m)).tocsr()
    k, label = csgraph.connected_components(adj, directed=False)
    counts = np.bincount(label, minlength=k).astype(np.float64)
    cx = np.bincount(label, weights=xy[:, 0], minlength=k) / counts
    cy = np.bincount(label, weights=xy[:, 1], minlength=k) / counts
    return label.astype(np.int64), np.column_stack([cx, cy])


def _add_line(
    graph: nx.MultiGraph,
    line: shapely.LineString,
    u: int,
    v: int,
    node_xy: NDArray[np.float64],
    cuts: list[tuple[float, int]],
) -> None:
    """Add ``line`` (ends snapped) from node ``u`` to ``v``, split at ``(distance, node)``."""
    length = float(shapely.length(line))
    prev_d, prev_n = 0.0, u
    for d, node in [*sorted(cuts), (length, v)]:
        if node == prev_n and d - prev_d <= _EPS_M:
            continue  # the same node cut twice
        seg = line if (prev_d == 0.0 and d == length) else substring(line, prev_d, d)
        xy = shapely.get_coordinates(seg)
        if len(xy) < 2:
            xy = np.zeros((2, 2))
        xy[0], xy[-1] = node_xy[prev_n], node_xy[node]
        seg = shapely.linestrings(xy)
        graph.add_edge(prev_n, node, length=float(shapely.length(seg)), geometry=seg)
        prev_d, prev_n = d, node


# --------------------------------------------------------------------------- arrays


@dataclass
class _Arrays:
    """A graph as arrays: node ``xy``; edges ``u``, ``v``, ``length`` and ``geom``."""

    xy: NDArray[np.float64]
    u: NDArray[np.int64]
    v: NDArray[np.int64]
    length: NDArray[np.float64]
    geom: Geoms

    @classmethod
    def from_networkx(cls, graph: nx.MultiGraph | nx.Graph) -> _Arrays:
        index: dict[Hashable, int] = {}
        xy = np.empty((graph.number_of_nodes(), 2))
        for i, (node, data) in enumerate(graph.nodes(data=True)):
            index[node] = i
            try:
                xy[i] = (float(data["x"]), float(data["y"]))
            except KeyError as exc:
                raise ConfigError(
                    f"graph node {node!r} has no 'x'/'y' attributes; build the graph with "
                    "lines_to_graph() or give every node x and y in metres",
                    node=node,
                ) from exc
        us, vs, geoms = [], [], []
        for a, b, data in graph.edges(data=True):
            i, j = index[a], index[b]
            geom = data.get("geometry")
            if geom is None:
                geom = shapely.linestrings([xy[i], xy[j]])
            us.append(i)
            vs.append(j)
            geoms.append(geom)
        g = np.asarray(geoms, object) if geoms else np.empty(0, object)
        return cls(
            xy,
            np.asarray(us, np.int64),
            np.asarray(vs, np.int64),
            np.asarray(shapely.length(g), np.float64),
            g,
        )

    @property
    def n(self) -> int:
        return len(self.xy)

    def split(self, cuts: dict[int, list[tuple[float, int]]]) -> None:
        """Split edges at ``{edge: [(distance along it, node)]}`` (nodes already added)."""
        if not cuts:
            return
        keep = np.ones(len(self.u), bool)
        us, vs, ls = [], [], []
        for e, at in cuts.items():
            keep[e] = False
            prev_d, prev_n = 0.0, int(self.u[e])
            for d, node in [*sorted(at), (float(self.length[e]), int(self.v[e]))]:
                us.append(prev_n)
                vs.append(node)
                ls.append(max(d - prev_d, 0.0))
                prev_d, prev_n = d, node
        self.u = np.concatenate([self.u[keep], np.asarray(us, np.int64)])
        self.v = np.concatenate([self.v[keep], np.asarray(vs, np.int64)])
        self.length = np.concatenate([self.length[keep], np.asarray(ls, np.float64)])
        self.geom = np.concatenate([self.geom[keep], np.full(len(us), None, object)])

    def add_nodes(self, xy: NDArray[np.float64]) -> NDArray[np.int64]:
        start = self.n
        self.xy = np.concatenate([self.xy, xy.reshape(-1, 2)])
        return np.arange(start, self.n, dtype=np.int64)

    def csr(self) -> sparse.csr_matrix:
        """Symmetric adjacency with edge lengths; the lightest of parallel edges."""
        ok = self.u != self.v
        u, v, w = self.u[ok], self.v[ok], np.maximum(self.length[ok], 1e-9)
        rows, cols, vals = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([w, w])
        order = np.lexsort((vals, cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        first = np.ones(len(rows), bool)
        first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        return sparse.csr_matrix((vals[first], (rows[first], cols[first])), shape=(self.n, self.n))
