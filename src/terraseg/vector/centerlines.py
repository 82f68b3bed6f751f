"""Road centerlines and the road graph, from a class raster read chunk by chunk.

Each chunk's road mask is read with a halo (mirrored past the scene edges),
skeletonized, and the skeleton is traced into pixel paths between nodes
(junction clusters and end pixels). The paths are clipped to the chunk core,
so every stretch of centerline belongs to exactly one chunk; the halo makes
the skeletons of neighbouring chunks agree along their shared edge, and the
endpoints that chunks leave on a shared edge are snapped together within
``snap_px``. The pieces are then merged (``shapely.line_merge``), spurs shorter
than ``prune_m`` are pruned, and the lines are simplified and measured in
metres. The graph's nodes are the line ends (junctions and dead ends), its
edges the lines between them.

Only the skeleton of one chunk is held at a time; the traced lines (the output)
are kept until the end. Coordinates are in the scene CRS; lengths in metres.
Pure module: numpy, scipy, scikit-image, shapely, networkx; opens no file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import geopandas as gpd
import networkx as nx
import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize as _skeletonize

from terraseg.core.grid import PixelWindow
from terraseg.core.metric import MetricFrame, SomeCRS
from terraseg.errors import ConfigError
from terraseg.vector.dissolve import (
    EDGE_BOTTOM,
    EDGE_LEFT,
    EDGE_RIGHT,
    EDGE_TOP,
    ChunkLayout,
    ReadFn,
    _as_2d,
    _internal_sides,
)

__all__ = [
    "RoadNetwork",
    "build_road_graph",
    "extract_centerlines",
    "to_networkx",
    "trace_skeleton",
]

Geoms = NDArray[np.object_]


# --------------------------------------------------------------------------- tracing


def trace_skeleton(skeleton: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """Trace a one-pixel-wide skeleton into polylines.

    Skeleton pixels are joined to their 8-neighbours, except diagonal neighbours
    that also share a 4-neighbour in the skeleton. Pixels of degree other than 2
    are nodes; 8-connected node pixels form one node, placed at their centroid.
    Each polyline runs from a node through a chain of degree-2 pixels to a node
    (possibly the same one); a chain with no node is returned as a closed loop.

    Parameters
    ----------
    skeleton
        ``(y, x)`` boolean skeleton (e.g. ``skimage.morphology.skeletonize``).

    Returns
    -------
    list of numpy.ndarray
        ``(k, 2)`` arrays of ``(x, y)`` = ``(col + 0.5, row + 0.5)``: pixel centres in
        the array's pixel frame. Isolated pixels give no polyline.

    Examples
    --------
    >>> sk = np.zeros((5, 7), bool); sk[2, 1:6] = True; sk[0:2, 3] = True
    >>> for p in sorted(p.tolist() for p in trace_skeleton(sk)):
    ...     print(p)
    [[1.5, 2.5], [2.5, 2.5], [3.5, 2.5]]
    [[3.5, 0.5], [3.5, 1.5], [3.5, 2.5]]
    [[3.5, 2.5], [4.5, 2.5], [5.5, 2.5]]
    """
    rr, cc = np.nonzero(skeleton)
    n = len(rr)
    if n == 0:
        return []
    adj, src, dst = _pixel_graph(rr, cc, skeleton.shape[1] + 2)
    deg = np.diff(adj.indptr)
    node = deg != 2
    x = cc.astype(np.float64) + 0.5
    y = rr.astype(np.float64) + 0.5
    comp, cx, cy = _node_clusters(src, dst, node, x, y)
    return _walk_chains(adj, node, comp, cx, cy, x, y)


def _pixel_graph(
    rr: NDArray[np.intp], cc: NDArray[np.intp], width: int
) -> tuple[sparse.csr_matrix, NDArray[np.intp], NDArray[np.intp]]:
    """Symmetric adjacency of skeleton pixels ``(rr, cc)`` (row-major order), and its edges.

    Pixels are joined to their 8-neighbours, except diagonal neighbours that also
    share a 4-neighbour. ``width`` is the skeleton's width plus 2 (a one-pixel frame
    keeps the flat keys of neighbours from wrapping). Returns ``(adj, src, dst)``,
    every edge listed in both directions.
    """
    n = len(rr)
    flat = (rr.astype(np.int64) + 1) * width + (cc.astype(np.int64) + 1)
    idx = np.arange(n)

    def lookup(q: NDArray[np.int64]) -> NDArray[np.int64]:
        pos = np.minimum(np.searchsorted(flat, q), n - 1)
        return np.where(flat[pos] == q, pos, -1)

    east, south, west = lookup(flat + 1), lookup(flat + width), lookup(flat - 1)
    se, sw = lookup(flat + width + 1), lookup(flat + width - 1)
    pairs = [
        (idx[east >= 0], east[east >= 0]),
        (idx[south >= 0], south[south >= 0]),
    ]
    keep_se = (se >= 0) & (east < 0) & (south < 0)
    keep_sw = (sw >= 0) & (west < 0) & (south < 0)
    pairs += [(idx[keep_se], se[keep_se]), (idx[keep_sw], sw[keep_sw])]
    src = np.concatenate([p[0] for p in pairs] + [p[1] for p in pairs])
    dst = np.concatenate([p[1] for p in pairs] + [p[0] for p in pairs])
    adj = sparse.csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    return adj, src, dst


def _node_clusters(
    src: NDArray[np.intp],
    dst: NDArray[np.intp],
    node: NDArray[np.bool_],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
) -> tuple[NDArray[np.int32], NDArray[np.float64], NDArray[np.float64]]:
    """8-connected clusters of node pixels: ``(cluster of each pixel, centroid x, y)``.

    Pixels that are not nodes are clusters of their own (their centroids go unused).
    """
    n = len(node)
    both = node[src] & node[dst]
    node_graph = sparse.csr_matrix(
        (np.ones(int(both.sum()), np.int8), (src[both], dst[both])), shape=(n, n)
    )
    _, comp = csgraph.connected_components(node_graph, directed=False)
    n_comp = int(comp.max()) + 1
    count = np.bincount(comp[node], minlength=n_comp)
    cx = np.bincount(comp[node], x[node], minlength=n_comp) / np.maximum(count, 1)
    cy = np.bincount(comp[node], y[node], minlength=n_comp) / np.maximum(count, 1)
    return comp, cx, cy


def _walk_chains(
    adj: sparse.csr_matrix,
    node: NDArray[np.bool_],
    comp: NDArray[np.int32],
    cx: NDArray[np.float64],
    cy: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
) -> list[NDArray[np.float64]]:
    """The polylines of :func:`trace_skeleton`: chains of degree-2 pixels walked from node
    to node (ends at the node clusters' centroids), then the loops with no node.

    The walk is a Python loop over pixels, on plain lists for speed.
    """
    n = len(node)
    indptr, indices = adj.indptr.tolist(), adj.indices.tolist()
    is_node = node.tolist()
    comp_l = comp.tolist()
    visited = bytearray(n)
    xs, ys = x.tolist(), y.tolist()
    out: list[NDArray[np.float64]] = []

    def walk(prev: int, cur: int) -> tuple[list[int], int]:
        path = []
        while not is_node[cur]:
            visited[cur] = 1
            path.append(cur)
            a, b = indices[indptr[cur]], indices[indptr[cur] + 1]
            prev, cur = cur, (b if a == prev else a)
            if visited[cur] and not is_node[cur]:
                break
        return path, cur

    for p in np.flatnonzero(node).tolist():
        for k in range(indptr[p], indptr[p + 1]):
            q = indices[k]
            if is_node[q] or visited[q]:
                continue
            path, end = walk(p, q)
            a, b = comp_l[p], comp_l[end]
            if a == b and len(path) <= 2:
                continue  # a tiny loop hanging off a node cluster
            pts = [(cx[a], cy[a])] + [(xs[i], ys[i]) for i in path] + [(cx[b], cy[b])]
            out.append(np.asarray(pts, np.float64))
    for start in np.flatnonzero(~node).tolist():  # loops with no node
        if visited[start]:
            continue
        nxt = indices[indptr[start]]
        path, _ = walk(nxt, start)
        if len(path) >= 3:
            pts = [(xs[i], ys[i]) for i in path] + [(xs[path[0]], ys[path[0]])]
            out.append(np.asarray(pts, np.float64))
    return out


def _skeleton(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """One-pixel-wide skeleton of a mask (``skimage.morphology.skeletonize``)."""
    out: NDArray[np.bool_] = _skeletonize(mask)  # type: ignore[no-untyped-call]
    return out


def _lines(paths: Sequence[NDArray[np.float64]], dx: float, dy: float) -> Geoms:
    if not paths:
        return np.empty(0, object)
    coords = np.concatenate(paths) + (dx, dy)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in paths])])
    return np.asarray(
        shapely.from_ragged_array(shapely.GeometryType.LINESTRING, coords, (offsets,)), object
    )


# --------------------------------------------------------------------------- per chunk


def _chunk_lines(
    read: ReadFn,
    window: PixelWindow,
    scene_shape: tuple[int, int],
    halo_px: int,
    road_class: int,
) -> tuple[Geoms, NDArray[np.bool_], NDArray[np.bool_]]:
    """Centerline pieces of one chunk core, in scene pixels, with border-end flags."""
    halo = PixelWindow(
        window.row_off - halo_px,
        window.col_off - halo_px,
        window.height + 2 * halo_px,
        window.width + 2 * halo_px,
    )
    inside = halo.clip(scene_shape)
    mask = _as_2d(read(inside), inside) == road_class
    if not mask.any():
        return np.empty(0, object), np.empty(0, bool), np.empty(0, bool)
    pad = (
        (inside.row_off - halo.row_off, halo.row_stop - inside.row_stop),
        (inside.col_off - halo.col_off, halo.col_stop - inside.col_stop),
    )
    if any(any(p) for p in pad):  # past a scene edge: mirror, so roads run on through it
        mask = np.pad(mask, pad, mode="symmetric")
    paths = trace_skeleton(_skeleton(mask))
    lines = _lines(paths, halo.col_off, halo.row_off)
    if len(lines) == 0:
        return lines, np.empty(0, bool), np.empty(0, bool)
    clipped = shapely.clip_by_rect(
        lines, window.col_off, window.row_off, window.col_stop, window.row_stop
    )
    parts = shapely.get_parts(clipped)
    parts = parts[
        (shapely.get_type_id(parts) == shapely.GeometryType.LINESTRING) & ~shapely.is_empty(parts)
    ]
    parts = parts[shapely.length(parts) > 0]
    if len(parts) == 0:
        return np.asarray(parts, object), np.empty(0, bool), np.empty(0, bool)
    first = shapely.get_coordinates(shapely.get_point(parts, 0))
    last = shapely.get_coordinates(shapely.get_point(parts, -1))
    sides = _internal_sides(window, scene_shape)

    def on_border(pt: NDArray[np.float64]) -> NDArray[np.bool_]:
        hit = np.zeros(len(pt), bool)
        for side, coord, val in (
            (EDGE_TOP, 1, window.row_off),
            (EDGE_BOTTOM, 1, window.row_stop),
            (EDGE_LEFT, 0, window.col_off),
            (EDGE_RIGHT, 0, window.col_stop),
        ):
            if side in sides:
                hit |= np.abs(pt[:, coord] - val) < 1e-6
        return hit

    return np.asarray(parts, object), on_border(first), on_border(last)


def _snap_ends(
    lines: Geoms, start_flag: NDArray[np.bool_], end_flag: NDArray[np.bool_], snap_px: float
) -> Geoms:
    """Move the flagged endpoints that lie within ``snap_px`` of each other to their mean."""
    li = np.concatenate([np.flatnonzero(start_flag), np.flatnonzero(end_flag)])
    which = np.concatenate([np.zeros(int(start_flag.sum()), int), np.full(int(end_flag.sum()), -1)])
    if len(li) < 2:
        return lines
    pts = shapely.get_coordinates(shapely.get_point(lines[li], which))
    pairs = cKDTree(pts).query_pairs(snap_px, output_type="ndarray")
    if len(pairs) == 0:
        return lines
    g = sparse.csr_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts), len(pts))
    )
    _, lab = csgraph.connected_components(g, directed=False)
    cnt = np.bincount(lab)
    mean = (
        np.column_stack([np.bincount(lab, pts[:, 0]), np.bincount(lab, pts[:, 1])]) / cnt[:, None]
    )
    coords, owner = shapely.get_coordinates(lines, return_index=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(lines)))])
    pos = np.where(which == 0, offsets[li], offsets[li + 1] - 1)
    coords[pos] = mean[lab]
    return np.asarray(
        shapely.from_ragged_array(shapely.GeometryType.LINESTRING, coords, (offsets,)), object
    )


# --------------------------------------------------------------------------- graph


def _merge(lines: Geoms) -> Geoms:
    if len(lines) == 0:
        return lines
    merged = shapely.line_merge(shapely.multilinestrings(lines))
    parts = shapely.get_parts(merged)
    return np.asarray(parts[~shapely.is_empty(parts)], object)


def _ends(lines: Geoms) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Node ids ``(u, v)`` of each line's ends (exactly equal points share a node) and node xy."""
    # first and last vertex of every line from one coordinate array (get_point per line is
    # several times slower), then the distinct points in np.unique(axis=0)'s order (by x, then
    # y) with a lexsort, which is faster than np.unique on rows
    coords, owner = shapely.get_coordinates(lines, return_index=True)
    counts = np.bincount(owner, minlength=len(lines))
    stop = np.cumsum(counts)
    pts = np.concatenate([coords[stop - counts], coords[stop - 1]])
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    ordered = pts[order]
    new = np.ones(len(ordered), bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inv = np.empty(len(pts), np.int64)
    inv[order] = np.cumsum(new) - 1
    return inv[: len(lines)], inv[len(lines) :], ordered[new]


def _prune(
    lines: Geoms,
    length_m: Callable[[Geoms], NDArray[np.float64]],
    prune_m: float,
    scene_shape: tuple[int, int],
    rounds: int = 4,
) -> Geoms:
    """Drop spurs, isolated lines and loops shorter than ``prune_m`` (metres).

    A spur is a line from a dead end to a junction. ``lines`` are in scene pixels;
    ``length_m(lines)`` measures them in metres. A spur whose dead end lies within 2
    pixels of the scene edge is a road leaving the scene and is kept.
    """
    for _ in range(rounds):
        if len(lines) == 0:
            break
        u, v, xy = _ends(lines)
        deg = np.bincount(np.concatenate([u, v]), minlength=len(xy))
        at_edge = (
            (xy[:, 0] <= 2)
            | (xy[:, 1] <= 2)
            | (xy[:, 0] >= scene_shape[1] - 2)
            | (xy[:, 1] >= scene_shape[0] - 2)
        )
        tip = (deg == 1) & ~at_edge
        short = length_m(lines) < prune_m
        isolated = (deg[u] == 1) & (deg[v] == 1)
        drop = short & ((tip[u] & (deg[v] >= 3)) | (tip[v] & (deg[u] >= 3)) | isolated | (u == v))
        if not drop.any():
            break
        lines = _merge(lines[~drop])
    return lines


def build_road_graph(
    lines: gpd.GeoDataFrame | gpd.GeoSeries,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Road graph of centerlines that meet at shared endpoints.

    Parameters
    ----------
    lines
        LineStrings in a CRS; with a ``length_m`` column it is reused, otherwise the
        length is measured (in metres for a projected CRS in metres).

    Returns
    -------
    nodes, edges
        ``nodes``: Point, ``node_id``, ``degree`` (line ends at the node; a loop counts
        twice). ``edges``: LineString, ``u``, ``v`` (node ids of its first and last
        point), ``length_m``. Same CRS as ``lines``.
    """
    geom = np.asarray(lines.geometry.array if hasattr(lines, "geometry") else lines.array, object)
    crs = lines.crs
    if isinstance(lines, gpd.GeoDataFrame) and "length_m" in lines.columns:
        length_m = lines["length_m"].to_numpy(np.float64)
    else:
        length_m = shapely.length(geom)
    if len(geom) == 0:
        nodes = gpd.GeoDataFrame(
            {"node_id": np.empty(0, np.int64), "degree": np.empty(0, np.int64)},
            geometry=gpd.GeoSeries([], crs=crs),
        )
        edges = gpd.GeoDataFrame(
            {"u": np.empty(0, np.int64), "v": np.empty(0, np.int64), "length_m": np.empty(0)},
            geometry=gpd.GeoSeries([], crs=crs),
        )
        return nodes, edges
    u, v, xy = _ends(geom)
    deg = np.bincount(np.concatenate([u, v]), minlength=len(xy))
    nodes = gpd.GeoDataFrame(
        {"node_id": np.arange(len(xy), dtype=np.int64), "degree": deg.astype(np.int64)},
        geometry=gpd.GeoSeries(shapely.points(xy), crs=crs),
    )
    edges = gpd.GeoDataFrame(
        {"u": u.astype(np.int64), "v": v.astype(np.int64), "length_m": length_m},
        geometry=gpd.GeoSeries(geom, crs=crs),
    )
    return nodes, edges


def to_networkx(nodes: gpd.GeoDataFrame, edges: gpd.GeoDataFrame) -> nx.MultiGraph:
    """A ``networkx.MultiGraph`` with osmnx-like attributes.

    Nodes are ``node_id`` with ``x``, ``y`` (CRS coordinates) and ``degree``; edges
    ``(u, v, key)`` with ``length`` (metres) and ``geometry``; ``graph["crs"]`` is the CRS.

    Examples
    --------
    >>> from shapely import LineString
    >>> lines = gpd.GeoSeries([LineString([(0, 0), (3, 4)]), LineString([(3, 4), (3, 9)])])
    >>> g = to_networkx(*build_road_graph(lines))
    >>> g.number_of_nodes(), sorted(d["length"] for _, _, d in g.edges(data=True))
    (3, [5.0, 5.0])
    """
    graph = nx.MultiGraph(crs=nodes.crs)
    xy = shapely.get_coordinates(np.asarray(nodes.geometry.array, object))
    for nid, deg, (x, y) in zip(
        nodes["node_id"].tolist(), nodes["degree"].tolist(), xy.tolist(), strict=True
    ):
        graph.add_node(nid, x=x, y=y, degree=deg)
    for u, v, length, geom in zip(
        edges["u"].tolist(),
        edges["v"].tolist(),
        edges["length_m"].tolist(),
        edges.geometry.array,
        strict=True,
    ):
        graph.add_edge(u, v, length=length, geometry=geom)
    return graph


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class RoadNetwork:
    """Road centerlines and their graph, in the scene CRS.

    Attributes
    ----------
    centerlines
        LineStrings with ``length_m`` (metres), one per stretch between junctions and
        dead ends.
    nodes
        Points with ``node_id`` and ``degree``.
    edges
        The centerlines with ``u``, ``v`` (node ids) and ``length_m``.
    """

    centerlines: gpd.GeoDataFrame
    nodes: gpd.GeoDataFrame
    edges: gpd.GeoDataFrame

    def to_networkx(self) -> nx.MultiGraph:
        """See :func:`to_networkx`."""
        return to_networkx(self.nodes, self.edges)


def extract_centerlines(
    read_classes: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    road_class: int = 2,
    halo_px: int = 64,
    prune_m: float = 12.0,
    simplify_m: float | None = None,
    snap_px: float = 3.0,
) -> RoadNetwork:
    """Road centerlines and graph from a class raster read chunk by chunk.

    Parameters
    ----------
    read_classes
        ``read(window) -> labels``: the ``(y, x)`` (or ``(1, y, x)``) class values of any
        window inside the scene (halo windows are clipped to the scene before reading).
    windows
        Chunk core windows that partition the scene exactly once (scene pixels).
    transform, crs
        Scene affine transform and CRS; outputs are in this CRS.
    road_class
        Class value of roads.
    halo_px
        Pixels read around each chunk so that skeletons agree along chunk edges; use at
        least the widest road's half width plus a margin.
    prune_m
        Spurs (dead ends hanging off a junction), isolated stubs and loops shorter than
        this (metres) are removed; skeleton artefacts at road corners and ends are about
        half a road width long.
    simplify_m
        Douglas-Peucker tolerance of the output lines, metres (default: one pixel).
    snap_px
        Endpoints that neighbouring chunks leave on their shared edge are joined when
        closer than this (pixels).

    Returns
    -------
    RoadNetwork
        ``centerlines`` (LineString, ``length_m``), ``nodes`` (Point, ``node_id``,
        ``degree``) and ``edges`` (LineString, ``u``, ``v``, ``length_m``).
    """
    if halo_px < 0 or prune_m < 0 or snap_px < 0:
        raise ConfigError(
            f"halo_px, prune_m and snap_px must be >= 0, got {halo_px}, {prune_m}, {snap_px}",
            halo_px=halo_px,
            prune_m=prune_m,
            snap_px=snap_px,
        )
    layout = ChunkLayout(windows)
    frame = MetricFrame.from_scene(transform, crs, layout.scene_shape)
    pieces, starts, ends = [], [], []
    for window in layout.windows:
        lines, s, e = _chunk_lines(read_classes, window, layout.scene_shape, halo_px, road_class)
        pieces.append(lines)
        starts.append(s)
        ends.append(e)
    return _network(pieces, starts, ends, frame, layout.scene_shape, prune_m=prune_m,
                    simplify_m=simplify_m, snap_px=snap_px)


def _network(
    pieces: Sequence[Geoms],
    starts: Sequence[NDArray[np.bool_]],
    ends: Sequence[NDArray[np.bool_]],
    frame: MetricFrame,
    scene_shape: tuple[int, int],
    *,
    prune_m: float,
    simplify_m: float | None,
    snap_px: float,
) -> RoadNetwork:
    """The :class:`RoadNetwork` from every chunk's :func:`_chunk_lines` (row-major order):
    ends snapped across chunk edges, lines merged, spurs pruned, simplified, measured."""
    lines = np.concatenate(pieces) if pieces else np.empty(0, object)
    if len(lines):
        lines = _snap_ends(lines, np.concatenate(starts), np.concatenate(ends), snap_px)
    lines = _merge(lines)
    if len(lines):
        lines = _prune(
            lines, lambda g: shapely.length(frame.px_to_metric(g)), prune_m, scene_shape
        )
    metric = frame.px_to_metric(lines)
    tol = frame.pixel_m if simplify_m is None else simplify_m
    if tol > 0 and len(metric):
        simple = np.asarray(shapely.simplify(metric, tol, preserve_topology=False), object)
        # a small loop can collapse to a point: keep such lines as they are
        ok = shapely.is_valid(simple) & (shapely.length(simple) > 0)
        metric = np.where(ok, simple, metric)
        out = frame.metric_to_crs(metric)
    else:
        out = frame.px_to_crs(lines)
    length_m = np.asarray(shapely.length(metric), np.float64)
    order = (
        np.lexsort((shapely.bounds(out)[:, 1], shapely.bounds(out)[:, 0]))
        if len(out)
        else np.empty(0, int)
    )
    centerlines = gpd.GeoDataFrame(
        {"length_m": length_m[order]}, geometry=gpd.GeoSeries(out[order], crs=frame.crs)
    )
    nodes, edges = build_road_graph(centerlines)
    return RoadNetwork(centerlines, nodes, edges)
