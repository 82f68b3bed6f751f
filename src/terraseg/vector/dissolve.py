"""Chunk layout and the chunk-edge dissolve behind :mod:`terraseg.vector.vectorization`.

A scene is processed as chunk windows that partition it exactly once
(:class:`ChunkLayout`). A part (polygon) touching an internal chunk edge waits in
a union-find (:class:`_Dissolver`) until every chunk across the edges it touches
has been read; then its group is complete and is unioned in one go
(:func:`_dissolve`). Buildings join parts with the same global instance id; roads
join parts whose edge pixels are 4-adjacent across a shared edge
(:func:`_connect`). Everything here works in scene pixels, where vertices are
integers and unions are exact. :mod:`terraseg.vector.centerlines` uses the same layout.

Pure module: numpy and shapely; opens no file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError

__all__ = [
    "EDGE_BOTTOM",
    "EDGE_LEFT",
    "EDGE_RIGHT",
    "EDGE_TOP",
    "ChunkLayout",
    "PackedGeoms",
    "ReadFn",
]

EDGE_TOP, EDGE_BOTTOM, EDGE_LEFT, EDGE_RIGHT = 1, 2, 4, 8
"""Bits of :attr:`~terraseg.vector.vectorization.ChunkPolygons.edges` (internal chunk edges)."""

_SIDES: tuple[int, ...] = (EDGE_TOP, EDGE_BOTTOM, EDGE_LEFT, EDGE_RIGHT)
_OPPOSITE = {
    EDGE_TOP: EDGE_BOTTOM,
    EDGE_BOTTOM: EDGE_TOP,
    EDGE_LEFT: EDGE_RIGHT,
    EDGE_RIGHT: EDGE_LEFT,
}

ReadFn: TypeAlias = Callable[[PixelWindow], "NDArray[Any]"]
"""``read(window) -> labels``: the ``(y, x)`` (or ``(1, y, x)``) labels of a scene window."""
Geoms: TypeAlias = "NDArray[np.object_]"


# --------------------------------------------------------------------------- chunk windows


def _as_2d(labels: NDArray[Any], window: PixelWindow) -> NDArray[Any]:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != window.shape:
        raise ConfigError(
            f"read function returned an array of shape {arr.shape} for window {window}; "
            f"expected {window.shape} (rows, cols) or (1, rows, cols)",
            shape=arr.shape,
            window=window,
        )
    return arr


def _internal_sides(window: PixelWindow, scene_shape: tuple[int, int] | None) -> list[int]:
    sides = []
    if window.row_off > 0:
        sides.append(EDGE_TOP)
    if scene_shape is None or window.row_stop < scene_shape[0]:
        sides.append(EDGE_BOTTOM)
    if window.col_off > 0:
        sides.append(EDGE_LEFT)
    if scene_shape is None or window.col_stop < scene_shape[1]:
        sides.append(EDGE_RIGHT)
    return sides


def _strip(arr: NDArray[Any], side: int) -> NDArray[Any]:
    if side == EDGE_TOP:
        return arr[0, :]
    if side == EDGE_BOTTOM:
        return arr[-1, :]
    if side == EDGE_LEFT:
        return arr[:, 0]
    return arr[:, -1]


def _edge_flags(
    labels: NDArray[Any], values: NDArray[np.int64], sides: Iterable[int]
) -> NDArray[np.uint8]:
    flags = np.zeros(len(values), np.uint8)
    for side in sides:
        strip = _strip(labels, side)
        on = np.unique(strip[strip != 0])
        if on.size:
            flags[np.isin(values, on)] |= np.uint8(side)
    return flags


# --------------------------------------------------------------------------- chunk layout


class ChunkLayout:
    """Chunk windows that partition a scene, and the windows across each chunk edge.

    Parameters
    ----------
    windows
        Chunk core windows (scene pixels); empty ones are ignored. Together they must
        cover ``[0, rows) x [0, cols)`` exactly once, where ``rows``/``cols`` are the
        largest stops.

    Attributes
    ----------
    windows
        The non-empty windows, in the given order (the processing order).
    scene_shape
        ``(rows, cols)`` of the scene.
    neighbours
        Per window, ``{EDGE_*: [indices of the windows across that edge]}``.

    Raises
    ------
    ConfigError
        If the windows do not partition the scene.

    Examples
    --------
    >>> lay = ChunkLayout([PixelWindow(0, 0, 4, 3), PixelWindow(0, 3, 4, 2)])
    >>> lay.scene_shape, lay.neighbours[0][EDGE_RIGHT], lay.neighbours[0][EDGE_LEFT]
    ((4, 5), [1], [])
    """

    def __init__(self, windows: Sequence[PixelWindow]) -> None:
        self.windows = [w for w in windows if not w.is_empty]
        if not self.windows:
            raise ConfigError("no chunk windows given; pass the chunk core windows", windows=[])
        rows = max(w.row_stop for w in self.windows)
        cols = max(w.col_stop for w in self.windows)
        self.scene_shape = (rows, cols)
        if (
            min(w.row_off for w in self.windows) != 0
            or min(w.col_off for w in self.windows) != 0
            or (sum(w.size for w in self.windows) != rows * cols)
        ):
            raise ConfigError(
                f"chunk windows must partition the scene ({rows} x {cols} px) exactly once; "
                "pass the chunk cores (e.g. ChunkGrid cores), not read windows",
                scene_shape=self.scene_shape,
            )
        by_row_stop: dict[int, list[int]] = {}
        by_row_off: dict[int, list[int]] = {}
        by_col_stop: dict[int, list[int]] = {}
        by_col_off: dict[int, list[int]] = {}
        for i, w in enumerate(self.windows):
            by_row_stop.setdefault(w.row_stop, []).append(i)
            by_row_off.setdefault(w.row_off, []).append(i)
            by_col_stop.setdefault(w.col_stop, []).append(i)
            by_col_off.setdefault(w.col_off, []).append(i)
        self.neighbours: list[dict[int, list[int]]] = []
        for w in self.windows:
            nb = {
                EDGE_TOP: [
                    j for j in by_row_stop.get(w.row_off, []) if _overlap_cols(w, self.windows[j])
                ],
                EDGE_BOTTOM: [
                    j for j in by_row_off.get(w.row_stop, []) if _overlap_cols(w, self.windows[j])
                ],
                EDGE_LEFT: [
                    j for j in by_col_stop.get(w.col_off, []) if _overlap_rows(w, self.windows[j])
                ],
                EDGE_RIGHT: [
                    j for j in by_col_off.get(w.col_stop, []) if _overlap_rows(w, self.windows[j])
                ],
            }
            self.neighbours.append(nb)

    def needs(self, i: int, edges: int) -> set[int]:
        """Chunks across the edges flagged in ``edges`` of chunk ``i``."""
        out: set[int] = set()
        for side in _SIDES:
            if edges & side:
                out.update(self.neighbours[i][side])
        return out


def _overlap_cols(a: PixelWindow, b: PixelWindow) -> bool:
    return a.col_off < b.col_stop and b.col_off < a.col_stop


def _overlap_rows(a: PixelWindow, b: PixelWindow) -> bool:
    return a.row_off < b.row_stop and b.row_off < a.row_stop


# --------------------------------------------------------------------------- dissolve


class _Dissolver:
    """Union-find over waiting parts; a group is done when no neighbour it needs is unread.

    ``max_vertices`` bounds memory for regions as large as the scene (a k-means
    cluster of bare ground, connected across every chunk): a group whose waiting
    parts hold more vertices than that is *cut*, its parts given out one by one as
    they arrive (each clipped to its chunk) instead of being held and unioned at
    the end. ``None``: every group is dissolved exactly, whatever its size.
    """

    def __init__(self, layout: ChunkLayout, max_vertices: int | None = None) -> None:
        self.layout = layout
        self.max_vertices = max_vertices
        self.vertices: dict[int, int] = {}
        self.cut: set[int] = set()
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        self.outstanding: dict[int, set[int]] = {}
        self.value: dict[int, int] = {}
        self.geom: dict[int, Any] = {}
        self.waiting: dict[int, list[int]] = {}
        self.done: set[int] = set()
        self._next = 0

    def find(self, key: int) -> int:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def add(self, chunk: int, geom: Any, value: int, edges: int) -> int:
        key = self._next
        self._next += 1
        self.parent[key] = key
        self.members[key] = [key]
        self.geom[key] = geom
        self.value[key] = value
        if self.max_vertices is not None:
            self.vertices[key] = int(shapely.get_num_coordinates(geom))
        need = self.layout.needs(chunk, edges) - self.done
        self.outstanding[key] = need
        for j in need:
            self.waiting.setdefault(j, []).append(key)
        return key

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        self.outstanding[ra] |= self.outstanding.pop(rb)
        if self.max_vertices is not None:
            self.vertices[ra] += self.vertices.pop(rb)
            if rb in self.cut:
                self.cut.discard(rb)
                self.cut.add(ra)
        return ra

    def finish(self, chunk: int, touched: Iterable[int]) -> list[tuple[int, list[Any]]]:
        """Mark ``chunk`` read; return ``(value, parts)`` of the groups now complete.

        Pieces of a cut group (see ``max_vertices``) come out as groups of one part.
        """
        roots = {self.find(k) for k in self.waiting.pop(chunk, [])}
        roots.update(self.find(k) for k in touched)
        out: list[tuple[int, list[Any]]] = []
        for root in roots:
            need = self.outstanding[root]
            need.discard(chunk)
            need -= self.done
            if not need:
                keys = self.members.pop(root)
                del self.outstanding[root]
                parts = [self.geom.pop(k) for k in keys if k in self.geom]
                if root in self.cut:  # the last pieces of a cut group, one by one
                    self.cut.discard(root)
                    out.extend((self.value[root], [p]) for p in parts)
                elif parts:
                    out.append((self.value[root], parts))
                for k in keys:
                    del self.parent[k]
                    del self.value[k]
                self.vertices.pop(root, None)
            elif self.max_vertices is not None and (
                root in self.cut or self.vertices[root] > self.max_vertices
            ):
                self.cut.add(root)  # too large to hold: give out what waits, piece by piece
                held = [k for k in self.members[root] if k in self.geom]
                out.extend((self.value[root], [self.geom.pop(k)]) for k in held)
                self.vertices[root] = 0
        return out

    def __len__(self) -> int:
        return len(self.geom)


def _dissolve(groups: list[tuple[int, list[Any]]]) -> Geoms:
    """Union each group's parts (exact: pixel-frame vertices are integers)."""
    out = np.empty(len(groups), object)
    for k, (_, parts) in enumerate(groups):
        out[k] = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    # drop the collinear vertices left on chunk seams, so the outline is the one an
    # unchunked polygonization gives
    return np.asarray(shapely.simplify(out, 0.0, preserve_topology=False), object)


def _connect(
    dis: _Dissolver,
    window: PixelWindow,
    side: int,
    strip: NDArray[np.int32],
    keys: dict[int, int],
    other_window: PixelWindow,
    other_strip: NDArray[np.int32],
    other_keys: dict[int, int],
) -> None:
    """Union the parts whose edge pixels are 4-adjacent across the shared edge."""
    if side in (EDGE_TOP, EDGE_BOTTOM):
        lo, hi = (
            max(window.col_off, other_window.col_off),
            min(window.col_stop, other_window.col_stop),
        )
        a = strip[lo - window.col_off : hi - window.col_off]
        b = other_strip[lo - other_window.col_off : hi - other_window.col_off]
    else:
        lo, hi = (
            max(window.row_off, other_window.row_off),
            min(window.row_stop, other_window.row_stop),
        )
        a = strip[lo - window.row_off : hi - window.row_off]
        b = other_strip[lo - other_window.row_off : hi - other_window.row_off]
    both = (a != 0) & (b != 0)
    if not both.any():
        return
    pairs = np.unique(np.column_stack([a[both], b[both]]), axis=0)
    for ca, cb in pairs.tolist():
        dis.union(keys[ca], other_keys[cb])


def _add_building_chunk(
    dis: _Dissolver,
    live: dict[int, int],
    i: int,
    values: Iterable[int],
    parts: Iterable[Any],
    flags: Iterable[int],
) -> list[int]:
    """Mark chunk ``i`` read and add its waiting building parts (one per global id,
    joined to the waiting parts with the same id); returns their keys."""
    dis.done.add(i)
    touched = []
    for value, geom, edges in zip(values, parts, flags, strict=True):
        key = dis.add(i, geom, int(value), int(edges))
        if value in live:
            dis.union(key, live[value])
        live[int(value)] = key
        touched.append(key)
    return touched


def _add_road_chunk(
    dis: _Dissolver,
    strips: dict[tuple[int, int], tuple[NDArray[np.int32], dict[int, int]]],
    i: int,
    parts: tuple[NDArray[np.int64], Geoms, NDArray[np.uint8]],
    chunk_strips: dict[int, NDArray[np.int32]],
    value: int,
) -> dict[int, int]:
    """Mark chunk ``i`` read, add its road ``parts`` on internal edges (component ids,
    geometries, ``EDGE_*`` bits) and join them to the parts across its edges through the
    components along them (``chunk_strips``: ``{EDGE_*: strip}``). ``strips`` keeps the
    strips whose neighbours are unread. Returns ``{component id: key}``."""
    layout = dis.layout
    window = layout.windows[i]
    dis.done.add(i)
    keys = {int(c): dis.add(i, g, value, int(e)) for c, g, e in zip(*parts, strict=True)}
    for side, strip in chunk_strips.items():
        for j in layout.neighbours[i][side]:
            other = strips.get((j, _OPPOSITE[side]))
            if other is not None:
                _connect(dis, window, side, strip, keys, layout.windows[j], *other)
        strips[(i, side)] = (strip, keys)
    for side in chunk_strips:  # free the strips whose neighbours are all read
        opp = _OPPOSITE[side]
        for j in layout.neighbours[i][side]:
            if all(k in dis.done for k in layout.neighbours[j][opp]):
                strips.pop((j, opp), None)
        if all(j in dis.done for j in layout.neighbours[i][side]):
            strips.pop((i, side), None)
    return keys


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True, slots=True, eq=False)
class PackedGeoms:
    """Geometries of one type, packed losslessly for the trip from a worker.

    Pixel-frame outlines have integer vertices and traced centerlines step one
    pixel at a time, so consecutive vertices mostly differ by small integers: those
    differences are kept as int8/int16, every other vertex as its exact float64
    value. :meth:`unpack` gives back geometries equal vertex for vertex (checked
    when packing; anything that does not round-trip is kept as it is).
    """

    kind: int  # shapely.GeometryType of the ragged array, or -1: ``raw`` holds them
    steps: NDArray[np.signedinteger[Any]]  # (n, 2) vertex minus previous; 0 at exact ones
    exact_at: NDArray[np.int32]  # vertices stored as they are
    exact_xy: NDArray[np.float64]  # (len(exact_at), 2)
    offsets: tuple[NDArray[np.int64], ...]
    single: NDArray[np.bool_]  # Polygon / LineString given where the ragged type is Multi*
    raw: Geoms | None = None

    def __len__(self) -> int:
        return len(self.raw) if self.raw is not None else len(self.single)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed arrays (WKB size of the geometries kept raw)."""
        if self.raw is not None:
            return int(sum(len(b) for b in shapely.to_wkb(self.raw))) if len(self.raw) else 0
        return sum(a.nbytes for a in (self.steps, self.exact_at, self.exact_xy, self.single,
                                      *self.offsets))

    @classmethod
    def pack(cls, geoms: Geoms) -> PackedGeoms:
        """Pack ``geoms`` (all polygonal or all linear, 2-D)."""
        geoms = np.asarray(geoms, object)
        empty = np.empty(0, np.int8)
        raw = cls(-1, empty.reshape(0, 2), np.empty(0, np.int32), np.empty((0, 2)), (),
                  np.empty(0, bool), geoms)
        if len(geoms) == 0 or shapely.is_empty(geoms).any() or shapely.has_z(geoms).any():
            return raw
        try:
            kind, coords, offsets = shapely.to_ragged_array(geoms)
        except ValueError:  # mixed geometry types
            return raw
        step = np.diff(coords, axis=0, prepend=coords[:1])
        whole = (step == np.round(step)).all(axis=1)
        whole[0] = False
        # int8 steps, or int16 when fewer exact vertices (20 bytes each) pay for it
        small = whole & (np.abs(step) <= 127).all(axis=1)
        wide = whole & (np.abs(step) <= 32767).all(axis=1)
        dtype: type[np.signedinteger[Any]] = np.int8
        if 2 * len(step) + 20 * int((~wide).sum()) < 20 * int((~small).sum()):
            small, dtype = wide, np.int16
        steps = np.where(small[:, None], step, 0).astype(dtype)
        exact_at = np.flatnonzero(~small).astype(np.int32)
        single = shapely.get_type_id(geoms) != int(kind)
        packed = cls(int(kind), steps, exact_at, coords[exact_at], tuple(offsets), single)
        if not np.array_equal(packed._coords(), coords):
            return raw
        return packed

    def _coords(self) -> NDArray[np.float64]:
        total = np.cumsum(self.steps, axis=0, dtype=np.float64)
        seg = np.cumsum(np.isin(np.arange(len(self.steps)), self.exact_at)) - 1
        start = self.exact_at[seg]
        out: NDArray[np.float64] = self.exact_xy[seg] + (total - total[start])
        return out

    def unpack(self) -> Geoms:
        """The geometries, as given to :meth:`pack`."""
        if self.raw is not None:
            return self.raw
        geoms = shapely.from_ragged_array(shapely.GeometryType(self.kind), self._coords(),
                                          self.offsets)
        geoms = np.asarray(geoms, object)
        if self.single.any():
            geoms[self.single] = shapely.get_geometry(geoms[self.single], 0)
        return geoms
