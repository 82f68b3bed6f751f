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
