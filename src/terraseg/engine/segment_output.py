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

from terraseg.export.labelling import CLASS_FIELD, LabelClass, labelling_style
from terraseg.export.qgis_styles import VectorStyle

__all__ = ["FLUSH_ROWS", "as_multi", "for_labelling", "stream_segments"]

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
    name: str = "segments",
    style: VectorStyle | None = None,
    show_raster: bool = True,
) -> int:
    """Write ``batches`` as layer ``layer`` of ``out_dir/<name>.gpkg``; return the row count.

    Parameters
    ----------
    batches
        GeoDataFrames with the same columns, in the scene CRS; empty ones are skipped.
    empty
        The layer's schema (no rows), written when no batch has a row.
    out_dir
        Output folder; ``<name>.gpkg`` and ``<name>.qgz`` are written there.
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
    name
        Stem of the GeoPackage and the project.
    style
        The layer's style instead of the default one (a labelling form).
    show_raster
        Put ``raster`` in the project (visible, over the scene); a labelling
        project leaves it out, so the labeller sees the image under the segments.
    """
    from terraseg.export.writers import export_run

    pools = _pooled((b for b in batches if len(b)), flush_rows)
    first = next(pools, empty)
    result = export_run({layer: first}, out_dir, scene_name=name,
                        masks={raster.stem: raster} if show_raster else {},
                        run_info=dict(run_info),
                        overwrite=overwrite, imagery=imagery,
                        styles=None if style is None else {layer: style})
    gpkg = out_dir / f"{name}.gpkg"
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


def for_labelling(
    batches: Iterable[gpd.GeoDataFrame], empty: gpd.GeoDataFrame, layer: str,
    classes: list[LabelClass],
) -> tuple[Iterator[gpd.GeoDataFrame], gpd.GeoDataFrame, VectorStyle]:
    """``batches`` and ``empty`` with an empty ``class`` field, and the layer's labelling style.

    The field is a nullable integer (a GeoPackage ``MEDIUMINT`` column, every value
    NULL): the class id a labeller picks from the form's Value Map
    (:func:`~terraseg.export.labelling.labelling_style`).
    """

    def with_class(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        frame = frame.copy()
        frame[CLASS_FIELD] = pd.Series(pd.NA, index=frame.index, dtype="Int32")
        return frame

    schema = with_class(empty)
    fields = ["fid", *(c for c in schema.columns if c != schema.geometry.name)]  # GeoPackage fid
    return ((with_class(b) for b in batches), schema, labelling_style(layer, classes, fields))


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
