"""Vector file formats: a GeoPackage of all layers, FlatGeobuf and GeoParquet per layer.

The GeoPackage gets an R-tree index per layer, the ``runs`` table and QGIS
default styles (``layer_styles``); FlatGeobuf files get a spatial index;
GeoParquet files store WKB with the CRS in the metadata and a ``bbox``
covering column.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import geopandas as gpd
import pandas as pd
import pyogrio

from terraseg.errors import ConfigError
from terraseg.export.layers import (
    _check_scene_name,
    _geometry_type,
    _warn_invalid,
    default_styles,
    prepare_layers,
)
from terraseg.export.output_files import _atomic, _call_ogr, _refuse_existing
from terraseg.export.qgis_styles import VectorStyle, write_layer_styles
from terraseg.export.run_metadata import runs_table

__all__ = ["write_flatgeobuf", "write_geopackage", "write_geoparquet"]

#: Writes one layer to a file: ``(path, frame, layer name)``.
LayerWriter: TypeAlias = Callable[[Path, gpd.GeoDataFrame, str], None]


# ----------------------------------------------------------------- GeoPackage


def _write_gpkg_to(
    path: Path,
    layers: Mapping[str, gpd.GeoDataFrame],
    styles: Mapping[str, VectorStyle],
    runs: pd.DataFrame | None,
) -> None:
    """Write a complete GeoPackage at ``path`` (which must not exist)."""
    options: dict[str, Any] = {"dataset_options": {"VERSION": "1.2"}}  # readable by GDAL >= 2.2
    for name, frame in layers.items():
        _, geometry_type = _geometry_type(frame, name)
        pyogrio.write_dataframe(
            frame,
            path,
            layer=name,
            driver="GPKG",
            geometry_type=geometry_type,
            promote_to_multi=geometry_type.startswith("Multi"),
            layer_options={"SPATIAL_INDEX": "YES", "GEOMETRY_NAME": "geom", "FID": "fid"},
            **options,
        )
        options = {}
    if runs is not None:
        pyogrio.write_dataframe(runs, path, layer="runs", driver="GPKG", **options)
    write_layer_styles(path, {k: v for k, v in styles.items() if k in layers})


def write_geopackage(
    layers: Mapping[str, gpd.GeoDataFrame],
    path: str | os.PathLike[str],
    *,
    run_info: Mapping[str, object] | None = None,
    styles: Mapping[str, VectorStyle] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``layers`` into one GeoPackage with spatial indexes and QGIS default styles.

    Parameters
    ----------
    layers
        ``{layer: GeoDataFrame}``, checked as by :func:`prepare_layers`.
    path
        Output ``.gpkg``; written under a temporary name, then renamed.
    run_info
        Run metadata for a ``runs`` table (see :func:`runs_table`); ``None``
        writes no table.
    styles
        Styles per layer; missing layers get :func:`default_styles`.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
    """
    out = Path(path)
    checked = prepare_layers(layers)
    chosen = {**default_styles(checked), **(styles or {})}
    runs = None if run_info is None else runs_table(run_info, scene_name=out.stem)
    for name, frame in checked.items():
        _warn_invalid(frame, name)
    with _atomic(out, overwrite=overwrite) as tmp:
        _call_ogr(_write_gpkg_to, tmp, checked, chosen, runs, target=out)
    return out


# ----------------------------------------------------------------- FlatGeobuf, GeoParquet


def _write_fgb_to(path: Path, frame: gpd.GeoDataFrame, name: str) -> None:
    _, geometry_type = _geometry_type(frame, name)
    pyogrio.write_dataframe(
        frame,
        path,
        layer=name,
        driver="FlatGeobuf",
        geometry_type=geometry_type,
        promote_to_multi=geometry_type.startswith("Multi"),
        layer_options={"SPATIAL_INDEX": "YES"},
    )


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "GeoParquet output needs pyarrow; `pip install pyarrow` or leave 'parquet' "
            "out of formats"
        ) from None


def _write_parquet_to(path: Path, frame: gpd.GeoDataFrame, name: str) -> None:
    frame.to_parquet(path, index=False, geometry_encoding="WKB", write_covering_bbox=True)


def _per_layer_files(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: Path,
    scene_name: str,
    suffix: str,
    writer: LayerWriter,
    overwrite: bool,
) -> dict[str, Path]:
    checked = prepare_layers(layers)
    paths = {name: out_dir / f"{scene_name}_{name}{suffix}" for name in checked}
    _refuse_existing(list(paths.values()), overwrite)
    with contextlib.ExitStack() as stack:
        for name, path in paths.items():
            tmp = stack.enter_context(_atomic(path, overwrite=overwrite))
            _call_ogr(writer, tmp, checked[name], name, target=path)
    return paths


def write_flatgeobuf(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write each layer as ``<out_dir>/<scene_name>_<layer>.fgb`` with a spatial index.

    All files are renamed into place only once every one is written.
    """
    _check_scene_name(scene_name)
    return _per_layer_files(layers, Path(out_dir), scene_name, ".fgb", _write_fgb_to, overwrite)


def write_geoparquet(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write each layer as GeoParquet ``<out_dir>/<scene_name>_<layer>.parquet``.

    Geometry is WKB with the CRS (PROJJSON) in the GeoParquet metadata and a
    ``bbox`` covering column (GeoParquet 1.1). Needs ``pyarrow``.
    """
    _check_scene_name(scene_name)
    _require_pyarrow()
    return _per_layer_files(
        layers, Path(out_dir), scene_name, ".parquet", _write_parquet_to, overwrite
    )
