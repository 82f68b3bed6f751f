"""Rendering one window of a synthetic city: image and truth rasters.

A window's pixels depend only on the layout and the window: features are
rasterized from exact vectors in global pixel coordinates, and noise is hashed
from global positions, so separately rendered windows tile the scene exactly.
The vector burning and the truth rasters are in :mod:`terraseg.synthetic.rasterize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from terraseg.core.grid import PixelWindow
from terraseg.synthetic import stamp as stamp
from terraseg.synthetic.blocks import ROOF_FLAT, ROOF_GABLE, Mat
from terraseg.synthetic.layout import CityLayout, PixelBlock, TruthFeatures
from terraseg.synthetic.noise import fbm, gaussian_grid, key_of, value_noise
from terraseg.synthetic.rasterize import ALL_TOUCHED, burn, cat, rasterize_truth, select

__all__ = ["render_window", "render_window_blocks", "rasterize_truth", "ALL_TOUCHED"]

_MARGIN_PX = 4  # blur and roof-edge neighbourhoods

# RGB, NIR and texture amplitude of each ground material
_MATERIALS: dict[int, tuple[float, float, float, float, float]] = {
    Mat.BACKGROUND: (96, 108, 66, 150, 24),
    Mat.LAWN: (86, 116, 56, 175, 22),
    Mat.SOIL: (150, 126, 98, 120, 22),
    Mat.SIDEWALK: (170, 166, 158, 130, 10),
    Mat.ROAD_DARK: (66, 68, 72, 55, 7),
    Mat.ROAD: (86, 87, 90, 64, 9),
    Mat.PARKING: (96, 96, 99, 70, 9),
    Mat.PAVED: (158, 153, 145, 125, 12),
    Mat.WATER: (46, 70, 78, 20, 4),
    Mat.POOL: (72, 168, 198, 40, 5),
    Mat.PATH: (176, 160, 134, 135, 14),
    Mat.DRYGRASS: (150, 144, 102, 150, 22),
    Mat.GRAVEL: (140, 136, 128, 115, 20),
    Mat.ROOF_UNIT: (205, 205, 202, 160, 4),
    Mat.SOLAR: (38, 46, 68, 35, 4),
    Mat.LAWN2: (72, 102, 50, 185, 20),
    Mat.CAR0 + 0: (226, 226, 222, 180, 3),
    Mat.CAR0 + 1: (30, 31, 35, 30, 3),
    Mat.CAR0 + 2: (160, 162, 166, 140, 3),
    Mat.CAR0 + 3: (158, 34, 34, 110, 3),
    Mat.CAR0 + 4: (40, 60, 128, 60, 3),
    Mat.CAR0 + 5: (100, 104, 84, 90, 3),
}
_TABLE = np.zeros((Mat.N, 4), dtype=np.float32)
_AMP = np.zeros(Mat.N, dtype=np.float32)
for _code, (_r, _g, _b, _n, _a) in _MATERIALS.items():
    _TABLE[_code] = (_r, _g, _b, _n)
    _AMP[_code] = _a
_GRASSY = np.zeros(Mat.N, dtype=bool)
_GRASSY[[Mat.BACKGROUND, Mat.LAWN, Mat.LAWN2, Mat.DRYGRASS]] = True
# tree crowns: broadleaf, light, conifer, reddish (RGB, NIR); chosen by each tree's tone
_TREES = np.array(
    [(44, 72, 34, 190), (84, 104, 52, 200), (30, 50, 36, 150), (112, 74, 48, 160)], dtype=np.float32
)
_TREE_CDF = np.array([0.62, 0.84, 0.96])
# paint kinds: RGB, NIR, opacity (white marking, hedge, fence, yellow marking)
_PAINT = (
    (226, 226, 218, 200, 0.8),
    (44, 70, 36, 190, 0.95),
    (150, 138, 118, 130, 0.7),
    (222, 190, 70, 180, 0.8),
)
_PAINT_RGBN = np.asarray(_PAINT, dtype=np.float32)


def render_window(
    layout: CityLayout, window: PixelWindow, bands: int = 3
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint32]]:
    """Render ``window`` of the city: image, class raster and instance raster.

    The result depends only on ``layout`` and ``window``: rendering a window on
    its own gives exactly the same pixels as the same region of the whole
    scene.

    Parameters
    ----------
    layout
        The city.
    window
        Global pixel window; it may run past the scene (the city goes on in
        the image there, and the truth is 0).
    bands
        3 (RGB) or 4 (RGB + NIR).

    Returns
    -------
    image
        ``(bands, y, x)`` uint8.
    classes
        ``(y, x)`` uint8: 0 background, 1 building, 2 road.
    instances
        ``(y, x)`` uint32: ``building_id``, or 0.
    """
    image, classes, inst, _ = render_window_blocks(layout, window, bands)
    return image, classes, inst


def render_window_blocks(
    layout: CityLayout, window: PixelWindow, bands: int = 3
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint32], list[PixelBlock]]:
    """:func:`render_window`, plus the blocks that were used (for truth vectors)."""
    m = _MARGIN_PX
    ext = PixelWindow(
        window.row_off - m, window.col_off - m, window.height + 2 * m, window.width + 2 * m
    )
    blocks = layout.blocks_for_window(ext)
    image = _render_image(layout, blocks, ext, bands)[:, m:-m, m:-m]
    truth = TruthFeatures.concat([b.truth for b in blocks])
    t = layout.transform
    x0, y0 = t * (window.col_off, window.row_off)
    x1, y1 = t * (window.col_stop, window.row_stop)
    region = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    keep_b = select(truth.buildings, region)
    keep_r = select(truth.roads, region)
    local = TruthFeatures(
        truth.buildings[keep_b],
        truth.building_id[keep_b],
        truth.roads[keep_r],
        truth.road_class[keep_r],
        truth.road_width_m[keep_r],
        truth.centerlines,
        truth.width_m,
    )
    classes, inst = rasterize_truth(local, window, t)
    return np.ascontiguousarray(image), classes, inst, blocks


@dataclass(frozen=True, slots=True)
class _Canvas:
    """The extended window being rendered: size, origin, and its pixel-grid helpers."""

    h: int
    w: int
    r0: int
    c0: int
    gsd_m: float
    pt: Affine
    region: shapely.Geometry

    @classmethod
    def of(cls, ext: PixelWindow, gsd_m: float) -> _Canvas:
        h, w = ext.shape
        r0, c0 = ext.row_off, ext.col_off
        pt = Affine.translation(c0, r0)
        return cls(h, w, r0, c0, gsd_m, pt, shapely.box(c0, r0, c0 + w, r0 + h))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.h, self.w)

    def px(self, metres: float) -> int:
        """A length in whole pixels (at least 1)."""
        return max(1, int(round(metres / self.gsd_m)))

    def centres(
        self, rows: NDArray[np.int64], cols: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Global pixel-frame ``(x, y)`` of the centres of local pixels ``(rows, cols)``."""
        return (
            (cols + (self.c0 + 0.5)).astype(np.float64),
            (rows + (self.r0 + 0.5)).astype(np.float64),
        )

    def candidates(
        self,
        x0: NDArray[np.float64],
        y0: NDArray[np.float64],
        x1: NDArray[np.float64],
        y1: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """:func:`stamp.candidates` of boxes ``(x0, y0, x1, y1)`` in this window."""
        return stamp.candidates(x0, y0, x1, y1, self.r0, self.c0, self.h, self.w)


def _render_image(
    layout: CityLayout, blocks: list[PixelBlock], ext: PixelWindow, bands: int
) -> NDArray[np.uint8]:
    cv = _Canvas.of(ext, layout.gsd_m)
    seed = layout.seed
    style = layout.style
    sun = layout.sun_px()
    mat = _ground_materials(blocks, cv)
    cars = _frames(blocks, "cars", 7)
    on_car = _stamp_cars(mat, cars, cv)
    fine = value_noise(key_of(seed, "fine"), cv.r0, cv.c0, cv.h, cv.w, cv.px(0.9))
    colour = _ground_colour(mat, fine, seed, style.dry_ground, bands, cv)
    _paint_marks(colour, _frames(blocks, "paint", 7), on_car, cv)
    roof = _roofs(colour, blocks, layout, fine, cv)
    trees = _frames(blocks, "trees", 5)
    _cast_shadows(colour, blocks, cars, trees, roof, sun, cv)
    _draw_trees(colour, trees, fine, style.sun_azimuth_deg, style.sun_elevation_deg, cv)
    return _expose(colour, seed, bands, cv)


def _ground_materials(blocks: list[PixelBlock], cv: _Canvas) -> NDArray[np.uint8]:
    """Ground material codes, drawn in layer order (blocks come in a global order)."""
    geoms = cat(blocks, "ground_geom")
    order = np.argsort(cat(blocks, "ground_layer"), kind="stable")
    geoms, mats = geoms[order], cat(blocks, "ground_mat")[order]
    sel = select(geoms, cv.region)
    mat: NDArray[np.uint8] = burn(geoms[sel], mats[sel], cv.shape, cv.pt, "uint8")
    return mat


def _stamp_cars(
    mat: NDArray[np.uint8], cars: NDArray[np.float64], cv: _Canvas
) -> NDArray[np.bool_]:
    """Stamp cars over the ground materials (later ones win); returns where cars are."""
    k, rows, cols = cv.candidates(*stamp.rect_bounds(cars[:, :6]))
    x, y = cv.centres(rows, cols)
    hit = stamp.rect_inside(cars, k, x, y)
    car_idx = stamp.last_wins(k[hit], rows[hit], cols[hit], cv.shape)
    on_car = car_idx > 0
    mat[on_car] = cars[car_idx[on_car] - 1, 6].astype(np.uint8)
    return on_car


def _ground_colour(
    mat: NDArray[np.uint8],
    fine: NDArray[np.float32],
    seed: int,
    dry_ground: float,
    bands: int,
    cv: _Canvas,
) -> NDArray[np.float32]:
    """``(bands, y, x)`` colour of the ground materials, with texture and dry patches."""
    grain = _tile_noise(seed, 1, cv.r0, cv.c0, cv.h, cv.w)[0]
    patch = fbm(
        key_of(seed, "patch"), cv.r0, cv.c0, cv.h, cv.w, (cv.px(40.0), cv.px(14.0), cv.px(5.0))
    )
    nb = bands  # colour planes: RGB, or RGB + NIR
    colour = np.take(_TABLE.T[:nb], mat, axis=1)  # (bands, y, x)
    tex = _AMP[mat] * ((fine - 0.5) + 0.35 * grain)
    grassy = _GRASSY[mat]
    dry = np.clip((patch - 0.55 + 0.45 * dry_ground) * 2.2, 0.0, 1.0) * grassy
    colour += dry * (_TABLE[Mat.DRYGRASS, :nb, None, None] - colour)
    colour += tex + 30.0 * (patch - 0.5) * grassy
    if nb == 4:
        colour[3] += tex
    return colour


def _paint_marks(
    colour: NDArray[np.float32],
    paint: NDArray[np.float64],
    on_car: NDArray[np.bool_],
    cv: _Canvas,
) -> None:
    """Paint, hedges and fences: thin, so blended by (approximate) coverage."""
    h, w = cv.shape
    nb = len(colour)
    k, rows, cols = cv.candidates(*stamp.rect_bounds(paint[:, :6], 1.0))
    x, y = cv.centres(rows, cols)
    if len(k):
        cov = stamp.rect_coverage(paint[:, :6], k, x, y)
        code = (cov * 1000).astype(np.int64) * 4 + paint[k, 6].astype(np.int64)
        best = np.zeros(h * w, dtype=np.int64)
        np.maximum.at(best, rows * w + cols, code)
        best[on_car.ravel()] = 0
        hit_px = np.flatnonzero(best >= 4)
        if len(hit_px):
            kinds = best[hit_px] % 4
            alpha = (best[hit_px] // 4).astype(np.float32) / 1000 * _PAINT_RGBN[kinds, 4]
            flat = colour.reshape(nb, -1)
            flat[:, hit_px] += alpha * (_PAINT_RGBN[kinds, :nb].T - flat[:, hit_px])


def _roofs(
    colour: NDArray[np.float32],
    blocks: list[PixelBlock],
    layout: CityLayout,
    fine: NDArray[np.float32],
    cv: _Canvas,
) -> NDArray[np.bool_]:
    """Shaded roofs, then roof overlays (units, solar panels); returns where roofs are."""
    nb = len(colour)
    part_geom = cat(blocks, "part_geom")
    idx = np.flatnonzero(select(part_geom, cv.region))
    part_r = burn(part_geom[idx], np.arange(1, len(idx) + 1), cv.shape, cv.pt, "int32")
    if len(idx):
        _shade_roofs(colour, part_r, idx, blocks, layout, cv.r0, cv.c0, fine)
    roof: NDArray[np.bool_] = part_r > 0
    geoms = cat(blocks, "overlay_geom")
    sel = select(geoms, cv.region)
    overlay = burn(geoms[sel], cat(blocks, "overlay_mat")[sel], cv.shape, cv.pt, "uint8")
    o = overlay > 0
    colour[:, o] = _TABLE[overlay[o], :nb].T
    return roof


def _cast_shadows(
    colour: NDArray[np.float32],
    blocks: list[PixelBlock],
    cars: NDArray[np.float64],
    trees: NDArray[np.float64],
    roof: NDArray[np.bool_],
    sun: tuple[float, float],
    cv: _Canvas,
) -> None:
    """Darken shadows: of buildings and cars on the ground, of trees on everything."""
    sx, sy = sun
    nb = len(colour)
    geoms = cat(blocks, "shadow_geom")
    dark = burn(geoms[select(geoms, cv.region)], 1, cv.shape, cv.pt, "uint8") > 0
    dark &= ~roof
    csx, csy = np.full(len(cars), 1.5 * sx), np.full(len(cars), 1.5 * sy)
    bx0, by0, bx1, by1 = stamp.rect_bounds(cars[:, :6])
    k, rows, cols = cv.candidates(
        np.minimum(bx0, bx0 + csx),
        np.minimum(by0, by0 + csy),
        np.maximum(bx1, bx1 + csx),
        np.maximum(by1, by1 + csy),
    )
    x, y = cv.centres(rows, cols)
    hit = stamp.sweep_inside(cars, csx, csy, k, x, y)
    dark[rows[hit], cols[hit]] = True
    tx, ty, tr, th = trees[:, 0], trees[:, 1], trees[:, 2], trees[:, 3]
    ax, ay = tx + 0.3 * th * sx, ty + 0.3 * th * sy
    bx, by = tx + 0.9 * th * sx, ty + 0.9 * th * sy
    rr = 0.9 * tr
    k, rows, cols = cv.candidates(
        np.minimum(ax, bx) - rr,
        np.minimum(ay, by) - rr,
        np.maximum(ax, bx) + rr,
        np.maximum(ay, by) + rr,
    )
    x, y = cv.centres(rows, cols)
    hit = stamp.capsule_inside(ax, ay, bx, by, rr, k, x, y)
    dark[rows[hit], cols[hit]] = True
    shade = np.array([0.42, 0.46, 0.56, 0.5], dtype=np.float32)[:nb, None, None]
    colour *= np.where(dark, shade, np.float32(1.0))


def _draw_trees(
    colour: NDArray[np.float32],
    trees: NDArray[np.float64],
    fine: NDArray[np.float32],
    az_deg: float,
    el_deg: float,
    cv: _Canvas,
) -> None:
    """Tree crowns over everything (the truth below them is unchanged)."""
    tx, ty, tr = trees[:, 0], trees[:, 1], trees[:, 2]
    k, rows, cols = cv.candidates(tx - tr, ty - tr, tx + tr, ty + tr)
    x, y = cv.centres(rows, cols)
    ragged = tr[k] * (0.8 + 0.35 * fine[rows, cols])  # irregular crown edges
    hit = (x - tx[k]) ** 2 + (y - ty[k]) ** 2 <= ragged * ragged
    tree_r = stamp.last_wins(k[hit], rows[hit], cols[hit], cv.shape)
    if tree_r.any():
        _paint_trees(colour, tree_r, trees, az_deg, el_deg, cv.r0, cv.c0, fine)


def _expose(
    colour: NDArray[np.float32], seed: int, bands: int, cv: _Canvas
) -> NDArray[np.uint8]:
    """Haze / illumination over kilometres, blur and sensor noise, then 8-bit pixels."""
    r0, c0, h, w = cv.r0, cv.c0, cv.h, cv.w
    colour *= 0.94 + 0.12 * value_noise(key_of(seed, "haze"), r0, c0, h, w, cv.px(900.0))
    out = np.empty((bands, h, w), dtype=np.uint8)
    noise = _tile_noise(seed, bands, r0, c0, h, w)
    for band in range(bands):
        blurred = gaussian_filter(colour[band], sigma=0.6, truncate=3.0, mode="nearest")
        blurred += 2.2 * noise[band]
        np.clip(np.rint(blurred), 0, 255, out=blurred)
        out[band] = blurred.astype(np.uint8)
    return out


def _frames(blocks: list[PixelBlock], name: str, width: int) -> NDArray[np.float64]:
    arrays = [getattr(b, name) for b in blocks]
    return np.concatenate(arrays) if arrays else np.zeros((0, width))


_TILES: dict[tuple[int, int], NDArray[np.float32]] = {}


def _tile_noise(seed: int, n: int, r0: int, c0: int, h: int, w: int) -> NDArray[np.float32]:
    """``n`` planes of unit-variance noise, a function of the global pixel position.

    The sum of two position-hashed tiles of coprime periods (251 and 256
    pixels), so it repeats only every 64,256 pixels and costs two lookups.
    """
    out = np.zeros((n, h, w), dtype=np.float32)
    for period in (251, 256):
        key = (seed, period)
        tile = _TILES.get(key)
        if tile is None or len(tile) < n:
            tile = gaussian_grid(key_of(seed, "tile", period), 0, 0, period, period, max(n, 4))
            tile *= np.float32(np.sqrt(0.5))
            if len(_TILES) > 16:
                _TILES.clear()
            _TILES[key] = tile
        rolled = np.roll(tile[:n], (-(r0 % period), -(c0 % period)), axis=(1, 2))
        reps = (1, -(-h // period), -(-w // period))
        out += np.tile(rolled, reps)[:, :h, :w]
    return out


def _shade_roofs(
    colour: NDArray[np.float32],
    part_r: NDArray[np.int32],
    idx: NDArray[np.intp],
    blocks: list[PixelBlock],
    layout: CityLayout,
    r0: int,
    c0: int,
    fine: NDArray[np.float32],
) -> None:
    """Roof colour with facet shading (gable/hip), texture and a darker rim."""
    frames = np.concatenate([b.part_frame for b in blocks])[idx]
    kinds = np.concatenate([b.part_kind for b in blocks])[idx]
    offsets = np.cumsum([0] + [len(b.bld_colour) for b in blocks])
    part_bld = np.concatenate(
        [b.part_bld + off for b, off in zip(blocks, offsets[:-1], strict=True)]
    )[idx]
    bld_colour = np.concatenate([b.bld_colour for b in blocks]).reshape(-1, 4)
    rows, cols = np.nonzero(part_r)
    p = part_r[rows, cols] - 1
    fr = frames[p]
    x = cols + c0 + 0.5 - fr[:, 0]
    y = rows + r0 + 0.5 - fr[:, 1]
    along = x * fr[:, 2] + y * fr[:, 3]
    across = -x * fr[:, 3] + y * fr[:, 2]
    hl, hw = fr[:, 4], fr[:, 5]
    # downslope direction of the facet a pixel lies on (pixel frame)
    kind = kinds[p]
    side_facet = (kind == ROOF_GABLE) | (
        np.abs(across) / np.maximum(hw, 1e-6) * hw >= np.abs(along) - (hl - hw)
    )
    sgn_c = np.sign(across) + (across == 0)
    sgn_a = np.sign(along) + (along == 0)
    dx = np.where(side_facet, -fr[:, 3] * sgn_c, fr[:, 2] * sgn_a)
    dy = np.where(side_facet, fr[:, 2] * sgn_c, fr[:, 3] * sgn_a)
    st = layout.style
    az, el = math.radians(st.sun_azimuth_deg), math.radians(st.sun_elevation_deg)
    sun = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    pitch = math.radians(32.0)
    light = (dx * sun[0] + dy * sun[1]) * math.sin(pitch) + math.cos(pitch) * sun[2]
    shade = np.where(kind == ROOF_FLAT, 1.0, 0.45 + 0.55 * np.clip(light, 0, 1) / sun[2])
    base = bld_colour[part_bld[p], : len(colour)]  # (n, bands)
    tex = 1.0 + 0.10 * (fine[rows, cols] - 0.5)
    vals = base.T * (shade * tex).astype(np.float32)
    # rim: pixels next to another roof part or the ground
    bld_map = np.zeros(part_r.shape, dtype=np.int64)
    bld_map[rows, cols] = part_bld[p] + 1
    rim = np.zeros(part_r.shape, dtype=bool)
    rim[1:, :] |= bld_map[1:, :] != bld_map[:-1, :]
    rim[:-1, :] |= bld_map[:-1, :] != bld_map[1:, :]
    rim[:, 1:] |= bld_map[:, 1:] != bld_map[:, :-1]
    rim[:, :-1] |= bld_map[:, :-1] != bld_map[:, 1:]
    vals *= np.where(rim[rows, cols], 0.82, 1.0).astype(np.float32)
    colour[:, rows, cols] = vals


def _paint_trees(
    colour: NDArray[np.float32],
    tree_r: NDArray[np.int64],
    trees: NDArray[np.float64],
    az_deg: float,
    el_deg: float,
    r0: int,
    c0: int,
    fine: NDArray[np.float32],
) -> None:
    """Tree crowns as lit spheres with clumpy texture."""
    rows, cols = np.nonzero(tree_r)
    t = trees[tree_r[rows, cols] - 1]
    dx = (cols + c0 + 0.5 - t[:, 0]) / t[:, 2]
    dy = (rows + r0 + 0.5 - t[:, 1]) / t[:, 2]
    d2 = np.clip(dx * dx + dy * dy, 0.0, 1.0)
    nz = np.sqrt(1.0 - d2)
    az, el = math.radians(az_deg), math.radians(el_deg)
    light = dx * math.sin(az) * math.cos(el) - dy * math.cos(az) * math.cos(el) + nz * math.sin(el)
    shade = 0.35 + 0.75 * np.clip(light, 0.0, 1.0)
    tone = t[:, 4]
    shade = shade * (0.72 + 0.56 * fine[rows, cols])
    species = np.searchsorted(_TREE_CDF, tone)
    base = _TREES[species, : len(colour)]  # (n, bands)
    vals = (base * (0.9 + 0.2 * ((tone * 7.0) % 1.0))[:, None]).T.astype(np.float32)
    vals *= shade.astype(np.float32)
    colour[:, rows, cols] = vals
