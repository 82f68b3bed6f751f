"""Blending weights and accumulation of tile predictions (numpy only).

Arrays are ``(band, y, x)``; windows are :class:`~terraseg.core.grid.PixelWindow` in scene
pixels. The protocol, which gives seamless results that do not depend on the chunk size
and computes no tile twice:

1. For each chunk, :func:`new_accumulator` over ``chunk.extent``; for each of its tiles,
   :func:`accumulate_tile` with :func:`tile_weights`. The accumulator holds ``K``
   weighted class channels and one weight-sum channel.
2. :func:`split_accumulator` gives the chunk's interior (final: no other chunk adds
   to it) and small pieces (the rest of its extent, strips about an overlap wide).
3. For each chunk, each of :func:`seam_windows` is :func:`assemble`-d from the pieces
   of the chunk and its neighbours; the sum equals what one global accumulator over
   all tiles would hold there.
4. :func:`normalize` the interior and the seams, then :func:`to_labels` or
   :func:`quantize_probs`.

The weights of all lattice tiles form a partition of unity: at every raster pixel
they sum to 1, so normalisation only matters where tiles were skipped (all nodata).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from terraseg.core.grid import Chunk, PixelWindow, TileId, TileLattice
from terraseg.errors import ConfigError, GridError

NODATA = 255
"""Class value of nodata pixels in label rasters."""

__all__ = [
    "NODATA",
    "labels_from_acc",
    "Ramp",
    "accumulate_tile",
    "assemble",
    "new_accumulator",
    "normalize",
    "quantize_probs",
    "seam_windows",
    "split_accumulator",
    "tile_weights",
    "to_labels",
    "window_1d",
]

Ramp = Literal["cosine", "linear", "none"]
_RAMPS: tuple[str, ...] = get_args(Ramp)


def _check_ramp(ramp: str) -> None:
    if ramp not in _RAMPS:
        raise ConfigError(
            f"unknown blending ramp {ramp!r}; use one of {', '.join(_RAMPS)}", ramp=ramp
        )


def window_1d(
    tile_px: int,
    overlap_px: int,
    *,
    ramp: Ramp = "cosine",
    first: bool,
    last: bool,
) -> NDArray[np.float64]:
    """Blending weight along one axis of a lattice tile, length ``tile_px``.

    The windows of the tiles of a :class:`~terraseg.core.grid.TileLattice` form a partition
    of unity: at every pixel of an axis of any length, the weights of the tiles covering
    it sum to 1. With ``o = overlap_px`` and ``s = tile_px - o``:

    - ``"cosine"``: the leading zone ``[0, o)`` rises as ``sin²(π/2 · (i + 0.5) / o)``,
      the trailing zone ``[s, tile_px)`` falls as ``cos²`` of the same; 1 between. A
      tile's trailing zone is its successor's leading zone, so the two sum to 1.
    - ``"linear"``: the same with ``(i + 0.5) / o``.
    - ``"none"``: 1 on the tile's core ``[o // 2, tile_px - (o - o // 2))``, 0 elsewhere
      (a crop to the core).

    When ``o > s`` (overlap over half a tile) three or more tiles overlap; the ramps are
    then narrowed to ``s`` pixels centred on the core boundary, so that at most two
    tiles blend at any pixel. ``first`` makes the leading part flat 1 (no tile before);
    ``last`` makes the trailing part flat 1 (no tile after, including past the raster).

    Examples
    --------
    >>> window_1d(8, 4, ramp="linear", first=False, last=False)
    array([0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    >>> window_1d(6, 2, ramp="none", first=True, last=False)
    array([1., 1., 1., 1., 1., 0.])
    >>> window_1d(4, 0, first=False, last=False)
    array([1., 1., 1., 1.])
    """
    lattice = TileLattice(tile_px, overlap_px)
    _check_ramp(ramp)
    stride = lattice.stride_px
    if ramp == "none":
        ramp_px, ramp_off = 0, lattice.lo_px
    else:
        ramp_px = min(overlap_px, stride)
        ramp_off = lattice.lo_px - ramp_px // 2  # 0 unless overlap_px > stride
    # Position in the leading zone [ramp_off, ramp_off + ramp_px) and in the trailing zone,
    # which is the successor tile's leading zone, one stride later.
    lead_pos = np.arange(tile_px, dtype=np.float64) - ramp_off
    trail_pos = lead_pos - stride
    lead = np.ones(tile_px)
    if not first:
        x = (lead_pos + 0.5) / max(ramp_px, 1)
        up = np.sin(np.pi / 2 * x) ** 2 if ramp == "cosine" else x
        lead = np.where(lead_pos < 0, 0.0, np.where(lead_pos < ramp_px, up, 1.0))
    trail = np.ones(tile_px)
    if not last:
        x = (trail_pos + 0.5) / max(ramp_px, 1)
        down = np.cos(np.pi / 2 * x) ** 2 if ramp == "cosine" else 1.0 - x
        trail = np.where(trail_pos < 0, 1.0, np.where(trail_pos < ramp_px, down, 0.0))
    out: NDArray[np.float64] = lead * trail
    return out


@functools.lru_cache(maxsize=256)
def _weights_2d(
    lattice: TileLattice, ramp: Ramp, first_y: bool, last_y: bool, first_x: bool, last_x: bool
) -> NDArray[np.float32]:
    wy = window_1d(lattice.tile_px, lattice.overlap_px, ramp=ramp, first=first_y, last=last_y)
    wx = window_1d(lattice.tile_px, lattice.overlap_px, ramp=ramp, first=first_x, last=last_x)
    w = np.outer(wy, wx).astype(np.float32)
    w.flags.writeable = False
    return w


def tile_weights(
    lattice: TileLattice,
    tile_id: TileId,
    n_tiles_yx: tuple[int, int],
    *,
    ramp: Ramp = "cosine",
) -> NDArray[np.float32]:
    """Blending weights ``(tile_px, tile_px)`` of lattice tile ``(i, j)``, float32, read-only.

    The outer product of :func:`window_1d` along rows and cols, with ``first``/``last``
    taken from the tile's index among ``n_tiles_yx = (rows, cols)`` tiles. Weights of all
    tiles placed at their windows sum to 1 at every raster pixel. The arrays are cached
    (at most 9 distinct per lattice and ramp) and shared: do not modify them.

    Examples
    --------
    >>> w = tile_weights(TileLattice(4, 2), (0, 1), (1, 3), ramp="linear")
    >>> w.shape, w.dtype, w[0].tolist()
    ((4, 4), dtype('float32'), [0.25, 0.75, 0.75, 0.25])
    """
    _check_ramp(ramp)
    i, j = tile_id
    ny, nx = n_tiles_yx
    if not (0 <= i < ny and 0 <= j < nx):
        raise GridError(
            f"tile id {tile_id} is outside the {ny} x {nx} tile lattice; "
            "take tile ids from Chunk.tiles()",
            tile_id=tile_id,
        )
    return _weights_2d(lattice, ramp, i == 0, i == ny - 1, j == 0, j == nx - 1)


def new_accumulator(n_classes: int, extent: PixelWindow) -> NDArray[np.float32]:
    """Zeroed accumulator ``(n_classes + 1, extent.height, extent.width)``, float32.

    Channels ``[:n_classes]`` hold weighted class scores, the last the weight sum.

    Examples
    --------
    >>> new_accumulator(2, PixelWindow(0, 0, 3, 4)).shape
    (3, 3, 4)
    """
    return np.zeros((n_classes + 1, extent.height, extent.width), dtype=np.float32)


def accumulate_tile(
    acc: NDArray[np.float32],
    extent: PixelWindow,
    tile_window: PixelWindow,
    probs: NDArray[np.floating],
    weights: NDArray[np.floating],
    *,
    scratch: bool = False,
) -> None:
    """Add one tile's weighted predictions into an accumulator, in place.

    Adds ``probs * weights`` into ``acc[:K]`` and ``weights`` into ``acc[K]``, for the part
    of the tile inside ``extent`` (tiles hang past the raster's bottom/right edge). No
    temporary larger than one tile is made; with ``scratch=True`` none at all:
    ``probs`` is then multiplied in place (the engine passes its reused score buffer).

    Parameters
    ----------
    acc
        ``(K + 1, extent.height, extent.width)`` float32 accumulator.
    extent
        Scene-pixel window that ``acc`` covers.
    tile_window
        Scene-pixel window of the tile.
    probs
        ``(K, tile_window.height, tile_window.width)`` class scores.
    weights
        ``(tile_window.height, tile_window.width)`` blending weights.

    Examples
    --------
    >>> acc = new_accumulator(1, PixelWindow(0, 0, 2, 3))
    >>> accumulate_tile(acc, PixelWindow(0, 0, 2, 3), PixelWindow(0, 1, 2, 4),
    ...                 np.full((1, 2, 4), 0.5), np.ones((2, 4)))
    >>> acc[:, 0].tolist()
    [[0.0, 0.5, 0.5], [0.0, 1.0, 1.0]]
    """
    k = acc.shape[0] - 1
    if acc.shape[1:] != extent.shape:
        raise GridError(
            f"accumulator of shape {acc.shape} does not match extent {extent}; "
            "build it with new_accumulator(n_classes, extent)",
        )
    if probs.shape != (k, *tile_window.shape) or weights.shape != tile_window.shape:
        raise GridError(
            f"tile predictions {probs.shape} and weights {weights.shape} do not fit "
            f"{k} classes over tile {tile_window}; expected {(k, *tile_window.shape)} "
            f"and {tile_window.shape}",
        )
    inter = tile_window.intersection(extent)
    if inter.is_empty:
        return
    a_sl = inter.relative_to(extent).to_slices()
    t_sl = inter.relative_to(tile_window).to_slices()
    w = weights[t_sl]
    if scratch:
        part = probs[(slice(None), *t_sl)]
        np.multiply(part, w, out=part)
        acc[(slice(0, k), *a_sl)] += part
    else:
        acc[(slice(0, k), *a_sl)] += probs[(slice(None), *t_sl)] * w
    acc[(k, *a_sl)] += w


def split_accumulator(
    acc: NDArray[np.float32], chunk: Chunk
) -> tuple[NDArray[np.float32], list[tuple[PixelWindow, NDArray[np.float32]]]]:
    """Split a chunk's accumulator into its interior and the pieces around it.

    Returns
    -------
    interior
        ``(K + 1, interior.height, interior.width)``, a view of ``acc`` over
        ``chunk.interior``: final, no other chunk contributes there.
    pieces
        ``chunk.extent`` minus ``chunk.interior`` as up to 8 non-empty
        ``(window, array)`` pairs (a 3 x 3 split by the interior's bounds, centre
        dropped), in scene pixels; the arrays are small contiguous copies, for
        :func:`assemble`.

    Examples
    --------
    >>> from terraseg.core.grid import ChunkGrid
    >>> chunk = ChunkGrid.from_shape((30, 30), tile_px=8, overlap_px=2, chunk_px=12).chunk(1, 1)
    >>> acc = new_accumulator(1, chunk.extent)
    >>> interior, pieces = split_accumulator(acc, chunk)
    >>> interior.shape, len(pieces), sum(w.size for w, _ in pieces) + chunk.interior.size
    ((2, 10, 10), 8, 196)
    """
    if acc.shape[1:] != chunk.extent.shape:
        raise GridError(
            f"accumulator of shape {acc.shape} does not match chunk {chunk.index}'s "
            f"extent {chunk.extent}; accumulate over chunk.extent",
        )
    interior = acc[(slice(None), *chunk.interior.relative_to(chunk.extent).to_slices())]
    pieces = [
        (win, np.ascontiguousarray(acc[(slice(None), *win.relative_to(chunk.extent).to_slices())]))
        for win in chunk.extent.split_around(chunk.interior)
    ]
    return interior, pieces


def seam_windows(chunk: Chunk) -> list[PixelWindow]:
    """The chunk's core minus its interior, as up to 8 non-empty windows (scene pixels).

    These are the parts of the core that neighbouring chunks' tiles also reach; each is
    :func:`assemble`-d from the pieces of the chunk and its neighbours.

    Examples
    --------
    >>> from terraseg.core.grid import ChunkGrid
    >>> chunk = ChunkGrid.from_shape((30, 30), tile_px=8, overlap_px=2, chunk_px=12).chunk(0, 0)
    >>> seam_windows(chunk)
    [PixelWindow(row_off=0, col_off=12, height=12, width=1), \
PixelWindow(row_off=12, col_off=0, height=1, width=12), \
PixelWindow(row_off=12, col_off=12, height=1, width=1)]
    """
    return chunk.core.split_around(chunk.interior)


def assemble(
    window: PixelWindow,
    pieces: Iterable[tuple[PixelWindow, NDArray[np.floating]]],
    n_channels: int,
) -> NDArray[np.float32]:
    """Sum the parts of ``pieces`` that fall in ``window``.

    Returns ``(n_channels, window.height, window.width)`` float32: zeros plus every
    piece's overlap with ``window``. Pieces that miss the window are ignored.

    Examples
    --------
    >>> piece = (PixelWindow(0, 0, 1, 3), np.ones((1, 1, 3)))
    >>> assemble(PixelWindow(0, 1, 2, 3), [piece, piece], 1)[0].tolist()
    [[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    """
    out = np.zeros((n_channels, window.height, window.width), dtype=np.float32)
    for win, arr in pieces:
        if arr.shape != (n_channels, *win.shape):
            raise GridError(
                f"piece of shape {arr.shape} does not fit window {win} with "
                f"{n_channels} channels; pass pieces from split_accumulator",
            )
        inter = win.intersection(window)
        if inter.is_empty:
            continue
        out[(slice(None), *inter.relative_to(window).to_slices())] += arr[
            (slice(None), *inter.relative_to(win).to_slices())
        ]
    return out


def normalize(
    acc: NDArray[np.floating],
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Class probabilities and validity from an accumulator ``(K + 1, h, w)``.

    Returns ``probs (K, h, w)`` float32, the weighted class channels divided by the
    weight sum where it is positive and 0 elsewhere, and ``valid (h, w)``, True where
    the weight sum is positive (False where every covering tile was skipped).

    Examples
    --------
    >>> probs, valid = normalize(np.array([[[1.0, 0.0]], [[2.0, 0.0]]]))
    >>> probs.tolist(), valid.tolist()
    ([[[0.5, 0.0]]], [[True, False]])
    """
    k = acc.shape[0] - 1
    weight = acc[k]
    valid = weight > 0
    probs = np.zeros(acc[:k].shape, dtype=np.float32)
    np.divide(acc[:k], weight, out=probs, where=valid, casting="unsafe")
    return probs, valid


def to_labels(
    probs: NDArray[np.floating], valid: NDArray[np.bool_], nodata: int = 255
) -> NDArray[np.uint8]:
    """Class labels ``(h, w)`` uint8: argmax over classes, ``nodata`` where not valid.

    Examples
    --------
    >>> probs = np.array([[[0.2, 0.9]], [[0.8, 0.1]]])
    >>> to_labels(probs, np.array([[True, False]])).tolist()
    [[1, 255]]
    """
    k = probs.shape[0]
    if not (k <= nodata <= 255):
        raise ConfigError(
            f"nodata={nodata} collides with the labels 0..{k - 1} or does not fit uint8; "
            "use nodata=255",
            nodata=nodata,
        )
    labels = argmax_classes(probs)
    labels[~valid] = nodata
    return labels


def argmax_classes(scores: NDArray[np.floating]) -> NDArray[np.uint8]:
    """``np.argmax(scores, axis=0)`` as uint8, several times faster for few classes.

    Walks the class planes once each (contiguous memory) instead of striding
    across them per pixel; ties go to the lowest class, as with ``np.argmax``.
    Scores may be an unnormalised accumulator: dividing by a positive weight
    does not change the argmax.

    Examples
    --------
    >>> argmax_classes(np.array([[[0.2, 0.5, 0.1]], [[0.8, 0.5, 0.0]]])).tolist()
    [[1, 0, 0]]
    """
    labels = np.zeros(scores.shape[1:], dtype=np.uint8)
    best = scores[0].copy()
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        labels[better] = k
        np.maximum(best, scores[k], out=best)
    return labels


def quantize_probs(
    probs: NDArray[np.floating], valid: NDArray[np.bool_], nodata: int = 255
) -> NDArray[np.uint8]:
    """Probabilities ``(K, h, w)`` as uint8 codes, ``nodata`` where not valid.

    Probabilities are clipped to ``[0, 1]`` and scaled to ``round(p * 254)``; codes at or
    above ``nodata`` move up by one so they never equal it. With the default
    ``nodata=255`` the codes are ``0..254`` and ``p ≈ code / 254``.

    Examples
    --------
    >>> probs = np.array([[[0.0, 0.5, 1.0]]])
    >>> quantize_probs(probs, np.array([[True, True, False]])).tolist()
    [[[0, 127, 255]]]
    """
    if not 0 <= nodata <= 255:
        raise ConfigError(f"nodata={nodata} does not fit uint8; use nodata=255", nodata=nodata)
    codes: NDArray[np.uint8] = np.rint(np.clip(probs, 0.0, 1.0) * 254.0).astype(np.uint8)
    if nodata < 255:
        codes += codes >= nodata
    codes[:, ~valid] = nodata
    return codes


def labels_from_acc(
    acc: np.ndarray, valid: np.ndarray, *, with_probs: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (uint8, 255 = nodata) and optional quantised probabilities of an accumulator.

    ``acc`` is ``(classes + 1, y, x)``: weighted class scores and, last, the summed
    weight. A pixel is nodata where ``valid`` is false or no tile weight reached it.

    Examples
    --------
    >>> acc = np.array([[[0.2, 0.0]], [[0.6, 0.0]], [[1.0, 0.0]]], np.float32)
    >>> labels, _ = labels_from_acc(acc, np.array([[True, True]]))
    >>> labels.tolist()
    [[1, 255]]
    """
    k = acc.shape[0] - 1
    ok = valid & (acc[k] > 0)
    labels = argmax_classes(acc[:k])  # dividing by the weight does not change the argmax
    labels[~ok] = NODATA
    probs = None
    if with_probs:
        p, _ = normalize(acc)
        probs = quantize_probs(p, ok, nodata=NODATA)
    return labels, probs
