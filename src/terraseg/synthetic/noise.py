"""Position-hashed noise for synthetic scenes (numpy only).

Every value here is a pure function of a key and a *global* integer position,
never of a sequential random stream, so any window of a scene can be rendered
on its own and equals the same region of the whole scene bit for bit.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["hash_u64", "uniform_grid", "value_noise", "fbm", "gaussian_grid", "key_of"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser (a bijection of uint64 with good avalanche)."""
    z = z ^ (z >> _S30)
    z = z * _M1
    z = z ^ (z >> _S27)
    z = z * _M2
    return z ^ (z >> _S31)


def hash_u64(*keys: ArrayLike) -> NDArray[np.uint64]:
    """Hash integer keys (broadcast together) to uniformly distributed ``uint64``.

    Negative keys are allowed (they wrap as two's complement).

    Examples
    --------
    >>> a = hash_u64(7, np.arange(3))
    >>> bool((a == hash_u64(7, np.arange(3))).all()), len(set(a.tolist()))
    (True, 3)
    """
    h = np.asarray(_GOLDEN, dtype=np.uint64)
    for key in keys:
        k = np.asarray(key)
        k64 = k.astype(np.int64).astype(np.uint64) if k.dtype != np.uint64 else k
        with np.errstate(over="ignore"):
            h = _mix(h + k64 * _GOLDEN)
    return h


def key_of(*parts: int | str) -> int:
    """A 63-bit integer key from ints and short strings (stable across runs)."""
    acc: list[int] = []
    for part in parts:
        if isinstance(part, str):
            acc.append(int.from_bytes(part.encode()[:8].ljust(8, b"\0"), "little") >> 1)
        else:
            acc.append(int(part))
    return int(hash_u64(*acc)) >> 2


def _unit(h: NDArray[np.uint64]) -> NDArray[np.float32]:
    """Top 24 bits of a hash as float32 in ``[0, 1)``."""
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def uniform_grid(key: int, row0: int, col0: int, height: int, width: int) -> NDArray[np.float32]:
    """Per-pixel uniform noise in ``[0, 1)`` for global rows/cols of a window."""
    rows = np.arange(row0, row0 + height, dtype=np.int64)[:, None]
    cols = np.arange(col0, col0 + width, dtype=np.int64)[None, :]
    return _unit(hash_u64(key, rows, cols))


def gaussian_grid(
    key: int, row0: int, col0: int, height: int, width: int, n: int
) -> NDArray[np.float32]:
    """``n`` planes of approximately standard-normal per-pixel noise, ``(n, y, x)``.

    Each plane is the centred sum of four 16-bit uniforms taken from two
    64-bit hashes of the position, which is cheap and close to Gaussian.
    """
    rows = np.arange(row0, row0 + height, dtype=np.int64)[:, None]
    cols = np.arange(col0, col0 + width, dtype=np.int64)[None, :]
    out = np.empty((n, height, width), dtype=np.float32)
    mask = np.uint64(0xFFFF)
    scale = np.float32(1.0 / 65536.0 * np.sqrt(3.0))  # var of sum of 4 U(0,1) is 1/3
    for plane in range(n):
        h1 = hash_u64(key, plane, rows, cols)
        acc = np.zeros((height, width), dtype=np.float32)
        for shift in (0, 16, 32, 48):
            acc += ((h1 >> np.uint64(shift)) & mask).astype(np.float32)
        out[plane] = acc * scale - np.float32(2.0 * np.sqrt(3.0))
    return out


def _axis(start: int, size: int, cell: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    pos = np.arange(start, start + size, dtype=np.int64)
    lat = np.floor_divide(pos, cell)
    frac = ((pos - lat * cell).astype(np.float32)) / np.float32(cell)
    frac = frac * frac * (np.float32(3.0) - np.float32(2.0) * frac)  # smoothstep
    return lat, frac


def value_noise(
    key: int, row0: int, col0: int, height: int, width: int, cell_px: int
) -> NDArray[np.float32]:
    """Smooth value noise in ``[0, 1)`` on a lattice of ``cell_px`` pixels (global frame)."""
    cell = max(1, int(cell_px))
    lr, fy = _axis(row0, height, cell)
    lc, fx = _axis(col0, width, cell)
    r0, c0 = int(lr[0]), int(lc[0])
    n_r = int(lr[-1]) - r0 + 2
    n_c = int(lc[-1]) - c0 + 2
    lat_r = np.arange(r0, r0 + n_r, dtype=np.int64)[:, None]
    lat_c = np.arange(c0, c0 + n_c, dtype=np.int64)[None, :]
    grid = _unit(hash_u64(key, cell, lat_r, lat_c))
    ix = lc - c0
    across = grid[:, ix] * (np.float32(1.0) - fx) + grid[:, ix + 1] * fx
    iy = lr - r0
    fy2 = fy[:, None]
    out: NDArray[np.float32] = across[iy] * (np.float32(1.0) - fy2) + across[iy + 1] * fy2
    return out


def fbm(
    key: int,
    row0: int,
    col0: int,
    height: int,
    width: int,
    cells_px: tuple[int, ...],
) -> NDArray[np.float32]:
    """Sum of value-noise octaves (halving weights), rescaled to about ``[0, 1]``."""
    total = np.zeros((height, width), dtype=np.float32)
    weight = 1.0
    norm = 0.0
    for octave, cell in enumerate(cells_px):
        total += np.float32(weight) * value_noise(key + octave, row0, col0, height, width, cell)
        norm += weight
        weight *= 0.5
    total *= np.float32(1.0 / norm)
    return total
