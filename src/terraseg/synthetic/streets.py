"""Street lattice of a synthetic city: pure geometry in lattice metres.

The city is laid out in a *lattice frame* ``(u, v)`` in metres, rotated and
shifted relative to the scene. Vertical street ``i`` follows
``u = U_i + A_i sin(2 pi v / L_i + phi_i)`` and horizontal street ``j`` follows
``v = V_j + B_j sin(2 pi u / M_j + psi_j)``; straight streets have zero
amplitude. Every parameter of street ``i`` comes from a hash of
``(seed, axis, i)``, so any part of the network is computed without the rest.
City block ``(i, j)`` is the cell between vertical streets ``i, i + 1`` and
horizontal streets ``j, j + 1``; it owns the segments on its top (``"h", i, j``)
and left (``"v", i, j``) edges, so each segment belongs to exactly one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from terraseg.synthetic.noise import hash_u64, key_of

__all__ = ["CityStyle", "Street", "Segment", "Streets", "ROAD_CLASSES", "unit"]

ROAD_CLASSES: tuple[str, ...] = ("arterial", "collector", "residential", "culdesac")
"""Road class names; a road's ``road_class`` code indexes this tuple."""

_SIDEWALK_M = (3.5, 2.5, 2.0, 1.5)
_WIDTH_M = ((17.0, 24.0), (11.0, 14.0), (6.5, 9.0), (6.0, 7.0))


def unit(*keys: int) -> float:
    """A float in ``[0, 1)`` from a hash of integer keys."""
    return float(int(hash_u64(*keys)) >> 11) / float(1 << 53)


@dataclass(frozen=True, slots=True)
class CityStyle:
    """Seed-determined look of a city: block sizes, street pattern, palette, sun.

    Lengths are in metres, angles in degrees (azimuth clockwise from north).
    """

    pitch_m: tuple[float, float]
    rotation_deg: float
    curved_share: float
    curve_amp_m: float
    arterial_every: int
    merge_share: float
    culdesac_share: float
    urban_bias: float
    tree_share: float
    palette: int
    dry_ground: float
    sun_azimuth_deg: float
    sun_elevation_deg: float

    @classmethod
    def from_seed(cls, seed: int) -> CityStyle:
        """Draw a style from ``seed`` (the same seed always gives the same style)."""
        rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, 0x57E])
        grid_like = rng.random() < 0.45
        return cls(
            pitch_m=(
                (float(rng.uniform(120.0, 200.0)), float(rng.uniform(72.0, 110.0)))
                if grid_like
                else (float(rng.uniform(150.0, 230.0)), float(rng.uniform(110.0, 165.0)))
            ),
            rotation_deg=0.0 if rng.random() < 0.25 else float(rng.uniform(-28.0, 28.0)),
            curved_share=0.0 if grid_like else float(rng.uniform(0.25, 0.8)),
            curve_amp_m=float(rng.uniform(6.0, 22.0)),
            arterial_every=int(rng.integers(4, 8)),
            merge_share=float(rng.uniform(0.04, 0.2)),
            culdesac_share=float(rng.uniform(0.0, 0.3) if grid_like else rng.uniform(0.4, 0.9)),
            urban_bias=float(rng.uniform(-0.25, 0.25)),
            tree_share=float(rng.uniform(0.5, 1.3)),
            palette=int(rng.integers(0, 3)),
            dry_ground=float(rng.uniform(0.0, 0.8)),
            sun_azimuth_deg=float(rng.uniform(120.0, 240.0)),
            sun_elevation_deg=float(rng.uniform(38.0, 62.0)),
        )


@dataclass(frozen=True, slots=True)
class Street:
    """One lattice street: offset, curve, class and carriageway width (metres)."""

    offset_m: float
    amp_m: float
    wavelength_m: float
    phase: float
    road_class: int
    width_m: float

    @property
    def sidewalk_m(self) -> float:
        return _SIDEWALK_M[self.road_class]

    def across(self, along: NDArray[np.float64]) -> NDArray[np.float64]:
        """Cross-street coordinate of the centreline at ``along`` (metres)."""
        if self.amp_m == 0.0:
            return np.full(along.shape, self.offset_m)
        arg = 2.0 * math.pi * along / self.wavelength_m + self.phase
        return self.offset_m + self.amp_m * np.sin(arg)

    def across1(self, along: float) -> float:
        if self.amp_m == 0.0:
            return self.offset_m
        arg = 2.0 * math.pi * along / self.wavelength_m + self.phase
        return self.offset_m + self.amp_m * math.sin(arg)


@dataclass(frozen=True, slots=True)
class Segment:
    """A street segment between two lattice corners, in lattice metres.

    ``coords`` is ``(n, 2)`` ``(u, v)``; ``present`` is false where blocks merge.
    """

    kind: str
    i: int
    j: int
    coords: NDArray[np.float64]
    road_class: int
    width_m: float
    sidewalk_m: float
    present: bool


class Streets:
    """The street network of one seed and style (computed on demand, memoised)."""

    def __init__(self, seed: int, style: CityStyle) -> None:
        self.seed = seed
        self.style = style
        self._streets: dict[tuple[str, int], Street] = {}
        self._segments: dict[tuple[str, int, int], Segment] = {}
        self._zones: dict[tuple[str, int, int], BaseGeometry] = {}

    def street(self, axis: str, n: int) -> Street:
        """Street ``n`` of ``axis`` ``"v"`` (constant ``u``) or ``"h"`` (constant ``v``)."""
        cached = self._streets.get((axis, n))
        if cached is not None:
            return cached
        st = self.style
        pitch = st.pitch_m[0] if axis == "v" else st.pitch_m[1]
        k = key_of(self.seed, "street", axis)
        jitter = (unit(k, n, 1) - 0.5) * 0.28 * pitch
        every = st.arterial_every
        phase_art = int(unit(k, 7) * every)
        if (n - phase_art) % every == 0:
            road_class = 0
        elif unit(k, n, 2) < 0.22:
            road_class = 1
        else:
            road_class = 2
        lo, hi = _WIDTH_M[road_class]
        width = lo + (hi - lo) * unit(k, n, 3)
        amp = 0.0
        if road_class != 0 and unit(k, n, 4) < st.curved_share:
            amp = st.curve_amp_m * (0.35 + 0.65 * unit(k, n, 5))
        street = Street(
            offset_m=n * pitch + jitter,
            amp_m=amp,
            wavelength_m=260.0 + 520.0 * unit(k, n, 6),
            phase=2.0 * math.pi * unit(k, n, 8),
            road_class=road_class,
            width_m=width,
        )
        if len(self._streets) > 20000:
            self._streets.clear()
        self._streets[(axis, n)] = street
        return street

    def corner(self, i: int, j: int) -> tuple[float, float]:
        """Crossing of vertical street ``i`` and horizontal street ``j``, ``(u, v)``."""
        sv = self.street("v", i)
        sh = self.street("h", j)
        v = sh.offset_m
        u = sv.across1(v)
        for _ in range(12):
            v = sh.across1(u)
            u = sv.across1(v)
        return u, v

    def segment(self, kind: str, i: int, j: int) -> Segment:
        """Segment ``"h"`` from corner ``(i, j)`` to ``(i + 1, j)``; ``"v"`` to ``(i, j + 1)``."""
        key = (kind, i, j)
        cached = self._segments.get(key)
        if cached is not None:
            return cached
        a = self.corner(i, j)
        if kind == "h":
            street = self.street("h", j)
            b = self.corner(i + 1, j)
            length = b[0] - a[0]
        else:
            street = self.street("v", i)
            b = self.corner(i, j + 1)
            length = b[1] - a[1]
        n = 2 if street.amp_m == 0.0 else max(3, int(abs(length) / 6.0) + 1)
        t = np.linspace(0.0, 1.0, n)
        coords = np.empty((n, 2))
        if kind == "h":
            coords[:, 0] = a[0] + (b[0] - a[0]) * t
            coords[:, 1] = street.across(coords[:, 0])
        else:
            coords[:, 1] = a[1] + (b[1] - a[1]) * t
            coords[:, 0] = street.across(coords[:, 1])
        coords[0] = a
        coords[-1] = b
        k = key_of(self.seed, "segment", kind)
        present = street.road_class == 0 or unit(k, i, j) >= self.style.merge_share
        seg = Segment(
            kind=kind,
            i=i,
            j=j,
            coords=coords,
            road_class=street.road_class,
            width_m=street.width_m,
            sidewalk_m=street.sidewalk_m,
            present=present,
        )
        if len(self._segments) > 20000:
            self._segments.clear()
        self._segments[key] = seg
        return seg

    def zone(self, kind: str, i: int, j: int) -> BaseGeometry:
        """Carriageway plus sidewalks of a segment (where nothing may be built)."""
        key = (kind, i, j)
        cached = self._zones.get(key)
        if cached is None:
            seg = self.segment(kind, i, j)
            cached = LineString(seg.coords).buffer(seg.width_m / 2 + seg.sidewalk_m, quad_segs=6)
            if len(self._zones) > 20000:
                self._zones.clear()
            self._zones[key] = cached
        return cached

    def cell_bounds(self, i: int, j: int) -> tuple[float, float, float, float]:
        """A box ``(umin, vmin, umax, vmax)`` that contains block ``(i, j)``'s cell."""
        v0, v1 = self.street("v", i), self.street("v", i + 1)
        h0, h1 = self.street("h", j), self.street("h", j + 1)
        return (
            v0.offset_m - v0.amp_m,
            h0.offset_m - h0.amp_m,
            v1.offset_m + v1.amp_m,
            h1.offset_m + h1.amp_m,
        )

    def index_range(self, axis: str, lo_m: float, hi_m: float) -> range:
        """Street indices whose cells may touch ``[lo_m, hi_m]`` along ``axis``."""
        pitch = self.style.pitch_m[0] if axis == "v" else self.style.pitch_m[1]
        return range(math.floor(lo_m / pitch) - 2, math.floor(hi_m / pitch) + 2)
