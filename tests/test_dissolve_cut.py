"""Regions too large to hold: ``iter_roads(max_vertices=...)`` writes them cut at chunk borders."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from vector_helpers import TRANSFORM, UTM, chunk_windows, reader

from terraseg.vector.vectorization import iter_roads

SIZE, CHUNK = 240, 60  # 4 x 4 chunks


def _scene() -> np.ndarray:
    """One region of class 2 over the whole scene, riddled with 1-px holes, and a small
    square region that crosses the corner of four chunks."""
    arr = np.full((SIZE, SIZE), 2, np.uint8)
    arr[3::6, 3::6] = 0  # holes: many vertices
    arr[50:70, 110:130] = 3  # a 20 x 20 island of class 3 across the chunk corner (60, 120)
    ring = np.zeros_like(arr, bool)
    ring[48:72, 108:132] = True
    ring[50:70, 110:130] = False
    arr[ring] = 1  # fenced off from the big region
    return arr


def _polygons(arr: np.ndarray, value: int, max_vertices: int | None) -> gpd.GeoDataFrame:
    frames = list(iter_roads(reader(arr), chunk_windows(arr.shape, CHUNK), TRANSFORM, UTM,
                             road_class=value, max_vertices=max_vertices))
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=UTM)


def test_a_scene_sized_region_is_cut_at_chunk_borders_without_losing_area() -> None:
    arr = _scene()
    whole = _polygons(arr, 2, None)
    cut = _polygons(arr, 2, max_vertices=500)
    assert len(whole) == 1
    assert len(cut) > 1
    pixel_area = float((arr == 2).sum()) * 0.25
    assert whole.area.sum() == cut.area.sum() == pixel_area
    # the pieces tile the region exactly: no overlap, nothing missing
    geoms = np.asarray(cut.geometry.array, dtype=object)
    assert shapely.union_all(geoms).symmetric_difference(whole.geometry[0]).area == 0
    inter = shapely.intersection(geoms[:, None], geoms[None, :])
    off_diagonal = ~np.eye(len(cut), dtype=bool)
    assert shapely.area(inter[off_diagonal]).max() == 0
    # each piece lies inside one chunk (cut along chunk borders, nowhere else)
    x0, y0 = TRANSFORM.c, TRANSFORM.f
    for g in cut.geometry:
        minx, miny, maxx, maxy = g.bounds
        c0, c1 = (minx - x0) / 0.5, (maxx - x0) / 0.5
        r0, r1 = (y0 - maxy) / 0.5, (y0 - miny) / 0.5
        assert c0 // CHUNK == (c1 - 1e-6) // CHUNK and r0 // CHUNK == (r1 - 1e-6) // CHUNK


def test_regions_under_the_bound_are_still_one_polygon() -> None:
    arr = _scene()
    small = _polygons(arr, 3, max_vertices=500)
    assert len(small) == 1 and small.area.sum() == 20 * 20 * 0.25  # across four chunks
    fence = _polygons(arr, 1, max_vertices=500)
    assert len(fence) == 1  # a ring across four chunks, dissolved
