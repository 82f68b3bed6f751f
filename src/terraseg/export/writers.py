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

This module runs the whole export; the pieces live in sibling modules:
:mod:`~terraseg.export.layers` (checks, reprojection, default styles),
:mod:`~terraseg.export.run_metadata` (``runs`` table),
:mod:`~terraseg.export.vector_formats` (GeoPackage, FlatGeobuf, GeoParquet),
:mod:`~terraseg.export.masks` (COG masks),
:mod:`~terraseg.export.scene_project` (the ``.qgz``) and
:mod:`~terraseg.export.output_files` (atomic writes). Their public names are
re-exported here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import geopandas as gpd
import pandas as pd
import pyproj

from terraseg.errors import ConfigError, CRSMismatchError
from terraseg.export.layers import (
    InvalidGeometryWarning,
    SomeCRS,
    _check_scene_name,
    _warn_invalid,
    default_styles,
    prepare_layers,
)
from terraseg.export.masks import (
    _copy_file,
    _inspect_masks,
    _mask_jobs,
    _mask_targets,
    export_masks,
)
from terraseg.export.output_files import _atomic, _call_ogr, _refuse_existing, _remove_all
from terraseg.export.qgis_project import ProjectLayer, RasterInfo, same_crs
from terraseg.export.qgis_styles import VectorStyle, read_layer_styles, write_layer_styles
from terraseg.export.run_metadata import runs_table
from terraseg.export.scene_project import (
    _raster_layers,
    _write_project_to,
    vector_project_layers,
    write_qgis_project,
    write_scene_project,
)
from terraseg.export.vector_formats import (
    _require_pyarrow,
    _write_fgb_to,
    _write_gpkg_to,
    _write_parquet_to,
    write_flatgeobuf,
    write_geopackage,
    write_geoparquet,
)

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
    "write_scene_project",
]

Format: TypeAlias = Literal["gpkg", "fgb", "parquet"]
#: Output formats :func:`export_run` understands.
FORMATS: tuple[Format, ...] = ("gpkg", "fgb", "parquet")
#: The layers terraseg produces, in GeoPackage order.
LAYER_NAMES = ("buildings", "roads", "road_centerlines", "road_nodes", "road_edges")


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
    vector_layers
        The vector part of a project over these files (small): with
        :func:`write_scene_project`, a project can be written later, once the
        masks exist.
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
    vector_layers: tuple[ProjectLayer, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the export (masks included)."""
        single = [p for p in (self.gpkg, self.project) if p is not None]
        return (*single, *self.flatgeobuf.values(), *self.parquet.values(), *self.masks.values())


# ----------------------------------------------------------------- the whole run


def export_run(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    formats: Sequence[Format] = ("gpkg",),
    masks: Mapping[str, str | os.PathLike[str]] = {},  # noqa: B006 - read only
    run_info: Mapping[str, object] = {},  # noqa: B006 - read only
    to_crs: SomeCRS | None = None,
    overwrite: bool = False,
    project: bool = True,
    imagery: str | os.PathLike[str] | None = None,
    link_masks: bool = False,
    styles: Mapping[str, VectorStyle] | None = None,
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
    imagery
        The source scene, shown under every layer of the ``.qgz`` (RGB from bands
        1-3, else grey), so polygons are checked against the image. Referenced in
        place: relative to the project when near it, else by absolute path.
    styles
        ``{layer: style}`` replacing the default style of those layers (e.g. a
        labelling layer's form, :func:`terraseg.export.labelling.labelling_style`).

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
    _check_request(layers, scene_name, formats)
    out = Path(out_dir)
    outputs = prepare_layers(layers, to_crs=to_crs)
    scene_crs = pyproj.CRS.from_user_input(next(iter(layers.values())).crs)
    styles = {**default_styles(outputs), **(styles or {})}
    runs = runs_table(run_info, scene_name=scene_name)
    infos = _inspect_masks(masks)
    _check_mask_crs(infos, scene_crs)
    for name, frame in outputs.items():
        _warn_invalid(frame, name)
    paths = _plan_paths(out, scene_name, outputs, formats, masks, project=project)
    _refuse_existing(paths.targets, overwrite)
    vectors = _write_files(
        paths, outputs, styles, runs, infos, scene_crs, overwrite=overwrite,
        link_masks=link_masks, imagery=None if imagery is None else Path(imagery),
    )
    _remove_all(paths.stale)
    return _export_result(paths, scene_name, outputs, styles, vectors)


def _check_request(
    layers: Mapping[str, gpd.GeoDataFrame], scene_name: str, formats: Sequence[Format]
) -> None:
    """Refuse a bad scene name, unknown formats, no layers, or GeoParquet without pyarrow."""
    _check_scene_name(scene_name)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if not layers:
        raise ConfigError("nothing to export: 'layers' is empty")
    if "parquet" in formats:
        _require_pyarrow()


def _check_mask_crs(infos: Mapping[str, RasterInfo], scene_crs: pyproj.CRS) -> None:
    """Refuse masks that are not in the CRS of the scene's vectors."""
    for name, info in infos.items():
        if not same_crs(info.crs, scene_crs):
            raise CRSMismatchError(
                f"mask '{name}' is in {info.crs.to_string()} but the vectors are in "
                f"{scene_crs.to_string()}; export masks and vectors of the same scene",
                mask=name,
            )


@dataclass(frozen=True, slots=True)
class _OutputPaths:
    """Where :func:`export_run` writes each output, and the mask copies to make."""

    out_dir: Path
    gpkg: Path | None
    fgb: dict[str, Path]
    parquet: dict[str, Path]
    mask_targets: dict[str, Path]
    mask_jobs: list[tuple[Path, Path]]
    stale: list[Path]
    qgz: Path | None

    @property
    def singles(self) -> list[Path]:
        """The project and the GeoPackage, the project first: exit order is reversed, so
        it is renamed into place last."""
        return [p for p in (self.qgz, self.gpkg) if p is not None]

    @property
    def targets(self) -> list[Path]:
        """Every file about to be written, in the order existing ones are reported."""
        masks = (target for _, target in self.mask_jobs)
        return [*self.singles, *self.fgb.values(), *self.parquet.values(), *masks]


def _plan_paths(
    out: Path,
    scene_name: str,
    outputs: Mapping[str, gpd.GeoDataFrame],
    formats: Sequence[Format],
    masks: Mapping[str, str | os.PathLike[str]],
    *,
    project: bool,
) -> _OutputPaths:
    """The output files of the requested formats, masks and project."""
    gpkg = out / f"{scene_name}.gpkg" if "gpkg" in formats else None
    fgb = {n: out / f"{scene_name}_{n}.fgb" for n in outputs} if "fgb" in formats else {}
    parquet = (
        {n: out / f"{scene_name}_{n}.parquet" for n in outputs} if "parquet" in formats else {}
    )
    mask_targets = _mask_targets(masks, out)
    mask_jobs, stale = _mask_jobs(masks, mask_targets)
    qgz = out / f"{scene_name}.qgz" if project and (gpkg or fgb or masks) else None
    return _OutputPaths(out, gpkg, fgb, parquet, mask_targets, mask_jobs, stale, qgz)


def _write_files(
    paths: _OutputPaths,
    outputs: Mapping[str, gpd.GeoDataFrame],
    styles: Mapping[str, VectorStyle],
    runs: pd.DataFrame,
    infos: Mapping[str, RasterInfo],
    scene_crs: pyproj.CRS,
    *,
    overwrite: bool,
    link_masks: bool,
    imagery: Path | None = None,
) -> list[ProjectLayer]:
    """Write every output under a temporary name; rename them all once all are written.

    Returns the vector half of the project's layer tree (written or not).
    """
    vectors = vector_project_layers(paths.out_dir, outputs, styles, gpkg=paths.gpkg,
                                    vector_files=paths.fgb)
    with contextlib.ExitStack() as stack:
        tmp = {p: stack.enter_context(_atomic(p, overwrite=overwrite)) for p in paths.singles}
        if paths.gpkg is not None:
            _call_ogr(_write_gpkg_to, tmp[paths.gpkg], outputs, styles, runs, target=paths.gpkg)
        for files, writer in ((paths.fgb, _write_fgb_to), (paths.parquet, _write_parquet_to)):
            for name, path in files.items():
                file_tmp = stack.enter_context(_atomic(path, overwrite=overwrite))
                _call_ogr(writer, file_tmp, outputs[name], name, target=path)
        for source, target in paths.mask_jobs:  # the largest files: copied once the vectors worked
            target_tmp = stack.enter_context(_atomic(target, overwrite=overwrite))
            _copy_file(source, target_tmp, link_masks)
        if paths.qgz is not None:
            masks_at = {k: (paths.mask_targets[k], infos[k]) for k in infos}
            tree = [*vectors, *_raster_layers(paths.out_dir, masks_at, imagery)]
            _write_project_to(tmp[paths.qgz], paths.qgz, tree, scene_crs)
    return vectors


def _export_result(
    paths: _OutputPaths,
    scene_name: str,
    outputs: Mapping[str, gpd.GeoDataFrame],
    styles: Mapping[str, VectorStyle],
    vectors: Sequence[ProjectLayer],
) -> ExportResult:
    """What :func:`export_run` wrote."""
    return ExportResult(
        out_dir=paths.out_dir,
        scene_name=scene_name,
        crs=pyproj.CRS.from_user_input(next(iter(outputs.values())).crs),
        feature_counts={name: len(frame) for name, frame in outputs.items()},
        styles=styles,
        gpkg=paths.gpkg,
        project=paths.qgz,
        flatgeobuf=paths.fgb,
        parquet=paths.parquet,
        masks=paths.mask_targets,
        vector_layers=tuple(vectors),
    )
