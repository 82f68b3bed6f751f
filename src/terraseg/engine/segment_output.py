"""``segments.gpkg`` and ``segments.qgz`` of ``terraseg segment``, written batch by batch.

The polygons of a scene's segments grow with its area (about 5 000 per km² at
50 m² segments; far more k-means regions), so they are never gathered in one
table: the chunk-by-chunk vectorizers (:func:`~terraseg.vector.vectorization.iter_buildings`,
:func:`~terraseg.vector.vectorization.iter_roads`) yield batches, the first batch
goes through :func:`~terraseg.export.writers.export_run` (GeoPackage with its
QGIS default style and ``runs`` table, the ``.qgz`` over the raster and the
source scene) and every later batch is appended to the GeoPackage layer. Should
an append fail, the GeoPackage and the project are removed, so no half-written
layer is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely

__all__ = ["FLUSH_ROWS", "as_multi", "stream_segments"]

#: Rows gathered before a write: each append re-opens the GeoPackage (about 0.1-0.4 s
#: on this machine), so batches of one chunk are pooled; 20 000 segment polygons hold
#: some 20-40 MB.
FLUSH_ROWS = 20_000


def as_multi(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``frame`` with every Polygon as a one-part MultiPolygon (one layer type whatever the batch).

    Examples
    --------
    >>> f = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])
    >>> as_multi(f).geom_type.tolist()
    ['MultiPolygon']
    """
    geoms = frame.geometry.array
    single = shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON
    if single.any():
        fixed = geoms.copy()
        fixed[single] = [shapely.MultiPolygon([g]) for g in geoms[single]]
        frame = frame.set_geometry(gpd.GeoSeries(fixed, index=frame.index, crs=frame.crs))
    return frame


def stream_segments(
    batches: Iterable[gpd.GeoDataFrame],
    empty: gpd.GeoDataFrame,
    out_dir: Path,
    *,
    layer: str,
    raster: Path,
    run_info: Mapping[str, Any],
    imagery: str | os.PathLike[str] | None,
    overwrite: bool,
    flush_rows: int = FLUSH_ROWS,
) -> int:
    """Write ``batches`` as layer ``layer`` of ``out_dir/segments.gpkg``; return the row count.

    Parameters
    ----------
    batches
        GeoDataFrames with the same columns, in the scene CRS; empty ones are skipped.
    empty
        The layer's schema (no rows), written when no batch has a row.
    out_dir
        Output folder; ``segments.gpkg`` and ``segments.qgz`` are written there.
    layer
        Layer name.
    raster
        The segmentation raster (in ``out_dir``), shown by the project.
    run_info
        Scalars for the GeoPackage ``runs`` table.
    imagery
        The source scene, shown under the layers; ``None`` for none.
    overwrite
        Replace existing outputs.
    flush_rows
        Rows pooled before each write (memory holds at most about this many plus
        one batch).
    """
    from terraseg.export.writers import export_run

    pools = _pooled((b for b in batches if len(b)), flush_rows)
    first = next(pools, empty)
    result = export_run({layer: first}, out_dir, scene_name="segments",
                        masks={raster.stem: raster}, run_info=dict(run_info),
                        overwrite=overwrite, imagery=imagery)
    gpkg = out_dir / "segments.gpkg"
    n = len(first)
    try:
        for pool in pools:
            pyogrio.write_dataframe(pool, gpkg, layer=layer, driver="GPKG", append=True)
            n += len(pool)
    except BaseException:
        for path in (gpkg, result.project):
            if path is not None:
                Path(path).unlink(missing_ok=True)
        raise
    return n


def _pooled(batches: Iterable[gpd.GeoDataFrame], rows: int) -> Iterator[gpd.GeoDataFrame]:
    """``batches`` concatenated into frames of at least ``rows`` rows (the last may be smaller)."""
    pool: list[gpd.GeoDataFrame] = []
    held = 0
    for batch in batches:
        pool.append(batch)
        held += len(batch)
        if held >= rows:
            yield _concat(pool)
            pool, held = [], 0
    if pool:
        yield _concat(pool)


def _concat(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    if len(frames) == 1:
        return frames[0]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry",
                            crs=frames[0].crs)
