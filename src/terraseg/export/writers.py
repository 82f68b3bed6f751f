"""GIS exports that open styled in QGIS: GeoPackage, FlatGeobuf, GeoParquet, COG masks, ``.qgz``.

:func:`export_run` writes one scene's results into a folder:

``<scene>.gpkg``
    layers ``buildings``, ``roads``, ``road_centerlines`` (and ``road_nodes``,
    ``road_edges`` when given), each with an R-tree spatial index; a
    non-spatial ``runs`` table with the run's metadata; and a ``layer_styles``
    table (the one QGIS itself creates) holding a default QML + SLD style per
    layer, so QGIS draws every layer styled as soon as it is added.
``<scene>_<layer>.fgb`` / ``<scene>_<layer>.parquet``
    FlatGeobuf (with spatial index) and GeoParquet (WKB, CRS in the metadata,
    bbox covering column) copies of every layer, on request.
masks
    The engine's COG masks (``classes.tif``, ``instances.tif``...), checked
    with :func:`~terraseg.io.raster_sink.validate_cog` and copied (or
    hard-linked) into the folder.
``<scene>.qgz``
    A QGIS project with the vector layers and masks, relative paths, class
    colours and the scene CRS; built without QGIS.

Every file is written under a temporary name and renamed once all of them are
written: a failed export leaves the previous outputs as they were and no
temporary files; existing outputs are refused before anything is written
unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import rasterio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

from terraseg import __version__
from terraseg.errors import ConfigError, CRSError, CRSMismatchError, ExportError, OutputExistsError
from terraseg.export.qgis_project import (
    ProjectLayer,
    RasterInfo,
    inspect_raster,
    project_xml,
    raster_layer,
    same_crs,
    vector_layer,
    write_qgz,
)
from terraseg.export.qgis_styles import (
    GeometryKind,
    VectorStyle,
    default_vector_style,
    geometry_kind,
    read_layer_styles,
    write_layer_styles,
)
from terraseg.io.atomic import atomic_output
from terraseg.io.raster_sink import validate_cog

__all__ = [
    "FORMATS",
    "LAYER_NAMES",
    "ExportResult",
    "InvalidGeometryWarning",
    "VectorStyle",
    "default_styles",
    "export_masks",
    "export_run",
    "prepare_layers",
    "read_layer_styles",
    "runs_table",
    "write_flatgeobuf",
    "write_geopackage",
    "write_geoparquet",
    "write_layer_styles",
    "write_qgis_project",
]

Format: TypeAlias = Literal["gpkg", "fgb", "parquet"]
SomeCRS: TypeAlias = str | int | pyproj.CRS
#: Output formats :func:`export_run` understands.
FORMATS: tuple[Format, ...] = ("gpkg", "fgb", "parquet")
#: The layers terraseg produces, in GeoPackage order.
LAYER_NAMES = ("buildings", "roads", "road_centerlines", "road_nodes", "road_edges")
_RESERVED = {"runs", "layer_styles", "sqlite_sequence"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
_KIND_ORDER: dict[GeometryKind, int] = {"point": 0, "line": 1, "polygon": 2}


class InvalidGeometryWarning(UserWarning):
    """Some exported geometries are invalid (written unchanged; the count is in the message)."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes
    ----------
    out_dir
        Output folder.
    scene_name
        Stem of the scene-level files.
    crs
        CRS of the vector outputs.
    feature_counts
        Features per layer.
    styles
        The style written for each layer.
    gpkg, project
        The GeoPackage and the QGIS project, if written.
    flatgeobuf, parquet, masks
        ``{layer: path}`` of the FlatGeobuf, GeoParquet and mask files.
    """

    out_dir: Path
    scene_name: str
    crs: pyproj.CRS = field(repr=False)
    feature_counts: Mapping[str, int]
    styles: Mapping[str, VectorStyle] = field(repr=False)
    gpkg: Path | None = None
    project: Path | None = None
    flatgeobuf: Mapping[str, Path] = field(default_factory=dict)
    parquet: Mapping[str, Path] = field(default_factory=dict)
    masks: Mapping[str, Path] = field(default_factory=dict)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the export (masks included)."""
        single = [p for p in (self.gpkg, self.project) if p is not None]
        return (*single, *self.flatgeobuf.values(), *self.parquet.values(), *self.masks.values())


# ----------------------------------------------------------------- validation


def _norm_crs(value: SomeCRS, *, what: str) -> pyproj.CRS:
    """``value`` as a pyproj CRS, or :class:`CRSError` in one line."""
    try:
        return pyproj.CRS.from_user_input(value)
    except (pyproj.exceptions.CRSError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CRSError(
            f"{what} {value!r} is not a valid CRS ({reason}); "
            "pass an EPSG code such as 'EPSG:4326' or a WKT/PROJ string",
            crs=value,
        ) from None


def _check_name(name: str, *, what: str) -> None:
    if (
        not _NAME_RE.match(name)
        or name in _RESERVED
        or name.lower().startswith(("gpkg_", "rtree_"))
    ):
        raise ConfigError(
            f"{what} name {name!r} is not usable as a table name; use letters, digits and "
            f"underscores (not starting with a digit), not {sorted(_RESERVED)} or gpkg_/rtree_",
            name=name,
        )


def _check_scene_name(scene_name: str) -> None:
    if (
        not scene_name
        or scene_name.startswith(".")
        or Path(scene_name).name != scene_name
        or any(ord(ch) < 32 for ch in scene_name)
    ):
        raise ConfigError(
            f"scene_name {scene_name!r} must be a plain file stem (no folders, not starting "
            "with '.'), e.g. 'city_2024'",
            scene_name=scene_name,
        )


def prepare_layers(
    layers: Mapping[str, gpd.GeoDataFrame], *, to_crs: SomeCRS | None = None
) -> dict[str, gpd.GeoDataFrame]:
    """Check the layers to export and reproject them if asked.

    Parameters
    ----------
    layers
        ``{layer name: GeoDataFrame}``; names must be valid table names.
        Every frame needs a CRS, and without ``to_crs`` all must share it.
    to_crs
        Target CRS of the outputs (EPSG code, ``"EPSG:4326"``, WKT...);
        ``None`` keeps the scene CRS. Areas and lengths already in the
        attributes (``area_m2``, ``length_m``) are kept as computed.

    Returns
    -------
    dict
        The layers, in the order given, reprojected when ``to_crs`` is set.

    Raises
    ------
    ConfigError
        Bad layer name or a value that is not a GeoDataFrame.
    CRSError
        A layer without CRS, or an invalid ``to_crs``.
    CRSMismatchError
        Layers in different CRSs and no ``to_crs``.
    """
    target = _norm_crs(to_crs, what="to_crs") if to_crs is not None else None
    out: dict[str, gpd.GeoDataFrame] = {}
    first: tuple[str, pyproj.CRS] | None = None
    for name, frame in layers.items():
        _check_name(name, what="layer")
        if not isinstance(frame, gpd.GeoDataFrame) or frame._geometry_column_name not in frame:
            raise ConfigError(
                f"layer '{name}' must be a GeoDataFrame with an active geometry column, "
                f"not {type(frame).__name__}",
                layer=name,
            )
        if frame.crs is None:
            raise CRSError(
                f"layer '{name}' has no CRS; set it with gdf.set_crs('EPSG:...') before export",
                layer=name,
            )
        crs = pyproj.CRS.from_user_input(frame.crs)
        if first is None:
            first = (name, crs)
        elif target is None and not same_crs(first[1], crs):
            raise CRSMismatchError(
                f"layer '{name}' is in {crs.to_string()} but '{first[0]}' is in "
                f"{first[1].to_string()}; reproject them to one CRS or pass to_crs",
                layer=name,
            )
        out[name] = frame.to_crs(target) if target is not None else frame
    return out


def _geometry_type(frame: gpd.GeoDataFrame, name: str) -> tuple[GeometryKind, str]:
    """``(kind, OGC type name)`` to declare for a layer; ``MultiX`` when singles and multis mix."""
    types = sorted({str(t) for t in frame.geom_type.dropna().unique()})
    try:
        kind = geometry_kind(types, name)
    except ValueError as exc:
        raise ExportError(str(exc), layer=name) from None
    base = {"point": "Point", "line": "LineString", "polygon": "Polygon"}[kind]
    if types == [base]:
        return kind, base
    return kind, f"Multi{base}" if types else base


def _warn_invalid(frame: gpd.GeoDataFrame, name: str) -> None:
    geoms = frame.geometry.to_numpy()
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    bad = int(np.count_nonzero(present & ~shapely.is_valid(geoms)))
    if bad:
        warnings.warn(
            f"layer '{name}': {bad} of {len(frame)} geometries are invalid and were written "
            "unchanged; repair them with shapely.make_valid if a tool rejects them",
            InvalidGeometryWarning,
            stacklevel=3,
        )


def default_styles(layers: Mapping[str, gpd.GeoDataFrame]) -> dict[str, VectorStyle]:
    """The QGIS style terraseg writes for each layer (see :func:`default_vector_style`)."""
    return {
        name: default_vector_style(name, _geometry_type(frame, name)[0], frame)
        for name, frame in layers.items()
    }


# ----------------------------------------------------------------- run metadata


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value, default=str, sort_keys=True)


def runs_table(run_info: Mapping[str, Any], *, scene_name: str) -> pd.DataFrame:
    """One row describing the run, for the GeoPackage ``runs`` table.

    Columns ``scene``, ``exported_utc`` and ``terraseg_version`` come first,
    then one column per ``run_info`` key (which may override them). Scalars
    are kept; dates become ISO 8601 text; mappings and lists (model names and
    versions, timings) become JSON text.

    Examples
    --------
    >>> row = runs_table({"config_hash": "ab12", "models": {"seg": "1.0"}}, scene_name="c")
    >>> row.loc[0, "scene"], row.loc[0, "config_hash"], row.loc[0, "models"]
    ('c', 'ab12', '{"seg": "1.0"}')
    """
    row: dict[str, Any] = {
        "scene": scene_name,
        "exported_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "terraseg_version": __version__,
    }
    for key, value in run_info.items():
        if not str(key) or str(key).lower() in ("fid", "geom"):
            raise ConfigError(f"run_info key {key!r} cannot be a column name; rename it")
        row[str(key)] = _scalar(value)
    frame = pd.DataFrame([row])
    for column in frame.columns[frame.isna().all()]:
        frame[column] = frame[column].astype("string")  # typed so GDAL gets a TEXT column
    return frame


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
    run_info: Mapping[str, Any] | None = None,
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


@contextlib.contextmanager
def _atomic(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """:func:`atomic_output` that also removes SQLite sidecars of the temporary file."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            yield tmp
        except BaseException:
            for suffix in _SQLITE_SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    tmp.with_name(tmp.name + suffix).unlink()
            raise


def _call_ogr(func: Any, *args: Any, target: Path) -> None:
    """Run a GDAL/OGR writer; its errors become :class:`ExportError` naming ``target``."""
    try:
        func(*args)
    except (DataSourceError, DataLayerError, FieldError, GeometryError, OSError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(
            f"cannot write '{target}': {exc}; check free disk space and the layer's columns",
            path=target,
        ) from exc


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
    writer: Any,
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


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"output '{existing[0]}' already exists{more}; pass --overwrite (overwrite=True) "
            "to replace it",
            path=existing[0],
        )


# ----------------------------------------------------------------- masks


def _inspect_masks(masks: Mapping[str, str | os.PathLike[str]]) -> dict[str, RasterInfo]:
    """Check every mask exists and is a valid COG; read what the project needs."""
    infos: dict[str, RasterInfo] = {}
    for name, value in masks.items():
        _check_name(name, what="mask")
        path = Path(value)
        if not path.is_file():
            raise ExportError(
                f"mask '{name}' file '{path}' does not exist; pass the COGs the run wrote",
                path=path,
            )
        problems = validate_cog(path)
        if problems:
            raise ExportError(
                f"mask '{name}' file '{path}' is not a valid Cloud-Optimized GeoTIFF: "
                f"{'; '.join(problems)}; rewrite it with terraseg.io.raster_sink.RasterSink",
                path=path,
                problems=problems,
            )
        try:
            infos[name] = inspect_raster(path)
        except (rasterio.errors.RasterioError, ValueError) as exc:
            raise ExportError(f"cannot read mask '{name}' file '{path}': {exc}", path=path) from exc
    return infos


def _mask_targets(masks: Mapping[str, str | os.PathLike[str]], out_dir: Path) -> dict[str, Path]:
    """Where each mask goes: its own file name in ``out_dir`` (unchanged when already there)."""
    targets: dict[str, Path] = {}
    for name, value in masks.items():
        source = Path(value)
        target = out_dir / source.name
        clash = [other for other, path in targets.items() if path == target]
        if clash:
            raise ConfigError(
                f"masks '{clash[0]}' and '{name}' are both named '{source.name}'; rename one",
                name=name,
            )
        targets[name] = target
    return targets


def _already_there(source: Path, target: Path) -> bool:
    return target.exists() and source.resolve() == target.resolve()


def _copy_file(source: Path, tmp: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, tmp)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(source, tmp)


def export_masks(
    masks: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    link: bool = False,
) -> dict[str, Path]:
    """Check COG masks and copy (or hard-link) them into ``out_dir``.

    Parameters
    ----------
    masks
        ``{layer name: COG path}``, e.g. ``{"classes": run/"classes.tif"}``.
        A GDAL ``.aux.xml`` sidecar (category names) travels with its raster.
    out_dir
        Destination folder; a mask already in it is only checked.
    overwrite
        Replace existing files of the same names.
    link
        Hard-link instead of copying where the file system allows it.

    Returns
    -------
    dict
        ``{layer name: path in out_dir}``.

    Raises
    ------
    ExportError
        A mask is missing or not a valid COG (the problems are listed).
    """
    _inspect_masks(masks)
    targets = _mask_targets(masks, Path(out_dir))
    jobs, stale = _mask_jobs(masks, targets)
    _refuse_existing([target for _, target in jobs], overwrite)
    with contextlib.ExitStack() as stack:
        for source, target in jobs:
            _copy_file(source, stack.enter_context(_atomic(target, overwrite=overwrite)), link)
    _remove_all(stale)
    return targets


def _mask_jobs(
    masks: Mapping[str, str | os.PathLike[str]], targets: Mapping[str, Path]
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(source, target)`` copies to make, ``.aux.xml`` sidecars included, and the
    sidecars of replaced masks that no longer describe them (to remove after the copy)."""
    jobs: list[tuple[Path, Path]] = []
    stale: list[Path] = []
    for name, value in masks.items():
        source, target = Path(value), targets[name]
        if _already_there(source, target):
            continue
        jobs.append((source, target))
        aux, target_aux = (p.with_name(p.name + ".aux.xml") for p in (source, target))
        if aux.is_file():
            jobs.append((aux, target_aux))
        elif target_aux.exists():
            stale.append(target_aux)
    return jobs, stale


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ----------------------------------------------------------------- QGIS project


def _project_layers(
    project_dir: Path,
    layers: Mapping[str, gpd.GeoDataFrame],
    styles: Mapping[str, VectorStyle],
    *,
    gpkg: Path | None,
    vector_files: Mapping[str, Path],
    masks: Mapping[str, tuple[Path, RasterInfo]],
) -> list[ProjectLayer]:
    """Layer tree top to bottom: points, lines, polygons, the ``runs`` table, then masks."""

    def rel(path: Path) -> str:
        relative = Path(os.path.relpath(path, project_dir)).as_posix()
        return relative if relative.startswith("../") else f"./{relative}"

    vectors: list[ProjectLayer] = []
    for name, frame in layers.items():
        if gpkg is None and name not in vector_files:
            continue
        source = f"{rel(gpkg)}|layername={name}" if gpkg is not None else rel(vector_files[name])
        xmin, ymin, xmax, ymax = (float(v) for v in frame.total_bounds)
        extent = (xmin, ymin, xmax, ymax) if np.isfinite([xmin, ymin, xmax, ymax]).all() else None
        crs = pyproj.CRS.from_user_input(frame.crs)
        wkb_type = _geometry_type(frame, name)[1]
        vectors.append(
            vector_layer(name, source, styles[name], crs=crs, extent=extent, wkb_type=wkb_type)
        )
    vectors.sort(key=lambda layer: _KIND_ORDER[layer.geometry or "polygon"])
    if gpkg is not None:
        vectors.append(ProjectLayer("runs", "table", f"{rel(gpkg)}|layername=runs"))
    for i, (name, (path, info)) in enumerate(masks.items()):
        vectors.append(raster_layer(name, rel(path), info, visible=i == 0))
    return vectors


def _write_project_to(
    tmp: Path, target: Path, layers: Sequence[ProjectLayer], crs: pyproj.CRS
) -> None:
    write_qgz(tmp, target.stem, project_xml(title=target.stem, layers=layers, crs=crs))


def write_qgis_project(
    path: str | os.PathLike[str],
    *,
    layers: Mapping[str, gpd.GeoDataFrame],
    gpkg: str | os.PathLike[str] | None = None,
    vector_files: Mapping[str, str | os.PathLike[str]] | None = None,
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    styles: Mapping[str, VectorStyle] | None = None,
    crs: SomeCRS | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a QGIS project (``.qgz``) showing already written layers and masks, styled.

    Parameters
    ----------
    path
        Output ``.qgz``. Data sources are stored relative to its folder.
    layers
        The exported vector layers (for extents, geometry types and styles).
    gpkg
        The GeoPackage holding ``layers`` (and a ``runs`` table, shown as a table).
    vector_files
        ``{layer: file}`` (e.g. FlatGeobuf) used when ``gpkg`` is ``None``.
    masks
        ``{layer name: COG}`` shown as rasters (the first visible).
    styles
        Styles per layer; missing layers get :func:`default_styles`.
    crs
        Project CRS; default: the first mask's, else the layers' CRS.
    overwrite
        Replace an existing project.
    """
    out = Path(path)
    checked = prepare_layers(layers)
    chosen = {**default_styles(checked), **(styles or {})}
    infos = _inspect_masks(masks or {})
    files = {k: Path(v) for k, v in (vector_files or {}).items()}
    mask_paths = {k: (Path(v), infos[k]) for k, v in (masks or {}).items()}
    tree = _project_layers(
        out.parent,
        checked,
        chosen,
        gpkg=None if gpkg is None else Path(gpkg),
        vector_files=files,
        masks=mask_paths,
    )
    if crs is not None:
        project_crs = _norm_crs(crs, what="project crs")
    elif infos:
        project_crs = next(iter(infos.values())).crs
    else:
        project_crs = pyproj.CRS.from_user_input(next(iter(checked.values())).crs)
    with _atomic(out, overwrite=overwrite) as tmp:
        _write_project_to(tmp, out, tree, project_crs)
    return out


# ----------------------------------------------------------------- the whole run


def export_run(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    formats: Sequence[Format] = ("gpkg",),
    masks: Mapping[str, str | os.PathLike[str]] = {},  # noqa: B006 - read only
    run_info: Mapping[str, Any] = {},  # noqa: B006 - read only
    to_crs: SomeCRS | None = None,
    overwrite: bool = False,
    project: bool = True,
    link_masks: bool = False,
) -> ExportResult:
    """Export one scene's vectors, masks and a QGIS project into ``out_dir``.

    Parameters
    ----------
    layers
        ``{layer: GeoDataFrame}`` in the scene CRS; terraseg's names are
        ``buildings`` (``building_id, score, area_m2, class``), ``roads``,
        ``road_centerlines``, ``road_nodes`` (``node_id, degree``) and
        ``road_edges`` (``u, v, length_m``). Other names are written with a
        neutral style.
    out_dir
        Output folder (created if needed).
    scene_name
        Stem of ``<scene>.gpkg``, ``<scene>.qgz`` and ``<scene>_<layer>.fgb|.parquet``.
    formats
        Any of ``"gpkg"``, ``"fgb"``, ``"parquet"``.
    masks
        ``{layer name: COG}`` the engine wrote (``{"classes": ..., "instances": ...}``);
        each must be a valid COG; copied into ``out_dir`` unless already there.
    run_info
        Metadata for the GeoPackage ``runs`` table: model names and versions,
        configuration hash, timings, dates... (see :func:`runs_table`).
    to_crs
        Reproject the vector outputs (masks keep the scene grid; the project
        keeps the scene CRS and QGIS reprojects on the fly).
    overwrite
        Replace existing outputs. Without it, any existing output raises
        :class:`~terraseg.errors.OutputExistsError` before anything is written.
        (Files of formats not requested this time are left as they are.)
    project
        Write ``<scene>.qgz`` (its vectors come from the GeoPackage, else the
        FlatGeobuf files).
    link_masks
        Hard-link masks instead of copying them where possible.

    Returns
    -------
    ExportResult

    Raises
    ------
    ConfigError
        Bad scene name, format, layer or mask name.
    CRSError, CRSMismatchError
        A layer without CRS, an invalid ``to_crs``, or inputs in different CRSs.
    OutputExistsError
        An output exists and ``overwrite`` is false (nothing was written).
    ExportError
        A mask is not a valid COG, or a file cannot be written. No output
        is changed and no temporary file is left.

    Examples
    --------
    >>> result = export_run(  # doctest: +SKIP
    ...     {"buildings": buildings, "roads": roads, "road_centerlines": lines},
    ...     "out", scene_name="city", formats=("gpkg", "fgb"),
    ...     masks={"classes": "run/classes.tif"}, run_info={"config_hash": "3f2a"})
    >>> result.gpkg, result.project  # doctest: +SKIP
    (PosixPath('out/city.gpkg'), PosixPath('out/city.qgz'))
    """
    _check_scene_name(scene_name)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if not layers:
        raise ConfigError("nothing to export: 'layers' is empty")
    if "parquet" in formats:
        _require_pyarrow()
    out = Path(out_dir)
    outputs = prepare_layers(layers, to_crs=to_crs)
    scene_crs = pyproj.CRS.from_user_input(next(iter(layers.values())).crs)
    out_crs = pyproj.CRS.from_user_input(next(iter(outputs.values())).crs)
    styles = default_styles(outputs)
    runs = runs_table(run_info, scene_name=scene_name)
    infos = _inspect_masks(masks)
    for name, info in infos.items():
        if not same_crs(info.crs, scene_crs):
            raise CRSMismatchError(
                f"mask '{name}' is in {info.crs.to_string()} but the vectors are in "
                f"{scene_crs.to_string()}; export masks and vectors of the same scene",
                mask=name,
            )
    for name, frame in outputs.items():
        _warn_invalid(frame, name)

    gpkg = out / f"{scene_name}.gpkg" if "gpkg" in formats else None
    fgb = {n: out / f"{scene_name}_{n}.fgb" for n in outputs} if "fgb" in formats else {}
    parquet = (
        {n: out / f"{scene_name}_{n}.parquet" for n in outputs} if "parquet" in formats else {}
    )
    mask_targets = _mask_targets(masks, out)
    mask_jobs, stale = _mask_jobs(masks, mask_targets)
    qgz = out / f"{scene_name}.qgz" if project and (gpkg or fgb or masks) else None
    # The project first: exit order is reversed, so it is renamed into place last.
    singles = [p for p in (qgz, gpkg) if p is not None]
    _refuse_existing(
        [*singles, *fgb.values(), *parquet.values(), *(t for _, t in mask_jobs)], overwrite
    )

    with contextlib.ExitStack() as stack:
        tmp = {p: stack.enter_context(_atomic(p, overwrite=overwrite)) for p in singles}
        if gpkg is not None:
            _call_ogr(_write_gpkg_to, tmp[gpkg], outputs, styles, runs, target=gpkg)
        for files, writer in ((fgb, _write_fgb_to), (parquet, _write_parquet_to)):
            for name, path in files.items():
                file_tmp = stack.enter_context(_atomic(path, overwrite=overwrite))
                _call_ogr(writer, file_tmp, outputs[name], name, target=path)
        for source, target in mask_jobs:  # the largest files: copied once the vectors worked
            target_tmp = stack.enter_context(_atomic(target, overwrite=overwrite))
            _copy_file(source, target_tmp, link_masks)
        if qgz is not None:
            masks_at = {k: (mask_targets[k], infos[k]) for k in masks}
            tree = _project_layers(
                out, outputs, styles, gpkg=gpkg, vector_files=fgb, masks=masks_at
            )
            _write_project_to(tmp[qgz], qgz, tree, scene_crs)
    _remove_all(stale)
    return ExportResult(
        out_dir=out,
        scene_name=scene_name,
        crs=out_crs,
        feature_counts={name: len(frame) for name, frame in outputs.items()},
        styles=styles,
        gpkg=gpkg,
        project=qgz,
        flatgeobuf=fgb,
        parquet=parquet,
        masks=mask_targets,
    )
