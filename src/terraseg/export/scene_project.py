"""The QGIS project (``.qgz``) over a scene's exported layers and masks.

Builds the layer tree (points, lines, polygons, the ``runs`` table, then the
masks) with data sources relative to the project folder, and writes it with
:mod:`terraseg.export.qgis_project`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import rasterio

from terraseg.errors import ExportError
from terraseg.export.layers import (
    SomeCRS,
    _geometry_type,
    _norm_crs,
    default_styles,
    prepare_layers,
)
from terraseg.export.masks import _inspect_masks
from terraseg.export.output_files import _atomic
from terraseg.export.qgis_project import (
    ProjectLayer,
    RasterInfo,
    project_xml,
    raster_layer,
    vector_layer,
    write_qgz,
)
from terraseg.export.qgis_renderers import GeometryKind
from terraseg.export.qgis_styles import VectorStyle, num
from terraseg.io.objstore import STAGE_DIR

__all__ = ["imagery_layer", "vector_project_layers", "write_qgis_project",
           "write_scene_project"]

_KIND_ORDER: dict[GeometryKind, int] = {"point": 0, "line": 1, "polygon": 2}


def _rel(path: Path, project_dir: Path) -> str:
    relative = Path(os.path.relpath(path, project_dir)).as_posix()
    return relative if relative.startswith("../") else f"./{relative}"


def vector_project_layers(
    project_dir: Path,
    layers: Mapping[str, gpd.GeoDataFrame],
    styles: Mapping[str, VectorStyle],
    *,
    gpkg: Path | None,
    vector_files: Mapping[str, Path],
) -> list[ProjectLayer]:
    """The vector part of the layer tree: points, lines, polygons, then the ``runs`` table.

    Small (extents, styles, sources), so a project can be written later, by
    another process, once the masks exist: see :func:`write_scene_project`.
    """
    vectors: list[ProjectLayer] = []
    for name, frame in layers.items():
        if gpkg is None and name not in vector_files:
            continue
        source = (f"{_rel(gpkg, project_dir)}|layername={name}" if gpkg is not None
                  else _rel(vector_files[name], project_dir))
        xmin, ymin, xmax, ymax = (float(v) for v in frame.total_bounds)
        extent = (xmin, ymin, xmax, ymax) if np.isfinite([xmin, ymin, xmax, ymax]).all() else None
        crs = pyproj.CRS.from_user_input(frame.crs)
        wkb_type = _geometry_type(frame, name)[1]
        vectors.append(
            vector_layer(name, source, styles[name], crs=crs, extent=extent, wkb_type=wkb_type)
        )
    vectors.sort(key=lambda layer: _KIND_ORDER[layer.geometry or "polygon"])
    if gpkg is not None:
        vectors.append(ProjectLayer("runs", "table", f"{_rel(gpkg, project_dir)}|layername=runs"))
    return vectors


def _raster_layers(
    project_dir: Path, masks: Mapping[str, tuple[Path, RasterInfo]], imagery: Path | None
) -> list[ProjectLayer]:
    """Masks (the first visible) and the source imagery at the bottom."""
    out = [raster_layer(name, _rel(path, project_dir), info, visible=i == 0)
           for i, (name, (path, info)) in enumerate(masks.items())]
    if imagery is not None:
        out.append(imagery_layer(imagery, project_dir))
    return out


def write_scene_project(
    path: str | os.PathLike[str],
    vectors: Sequence[ProjectLayer],
    crs: SomeCRS,
    *,
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    imagery: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    mask_infos: Mapping[str, RasterInfo] | None = None,
) -> Path:
    """Write a scene's ``.qgz`` from its vector layers (:func:`vector_project_layers`,
    as :attr:`~terraseg.export.writers.ExportResult.vector_layers` returns them) and
    the masks and imagery that exist by now; each mask must be a valid COG in
    ``crs``. Written under a temporary name, then renamed.

    ``mask_infos`` (one :func:`~terraseg.export.qgis_project.inspect_raster` per
    mask, e.g. read from object storage through GDAL) are used instead of opening
    ``masks``, whose paths then only place the layers (they need not exist yet).
    """
    return _write_project(Path(path), vectors, masks, None if imagery is None else Path(imagery),
                          crs, None, overwrite=overwrite, infos=mask_infos)


def _write_project(
    out: Path,
    vectors: Sequence[ProjectLayer],
    masks: Mapping[str, str | os.PathLike[str]] | None,
    imagery: Path | None,
    crs: SomeCRS | None,
    fallback_crs: pyproj.CRS | None,
    *,
    overwrite: bool,
    infos: Mapping[str, RasterInfo] | None = None,
) -> Path:
    """Vectors, then the masks (inspected, unless ``infos`` are given) and the imagery,
    written atomically to ``out`` in ``crs``, else the first mask's CRS, else ``fallback_crs``."""
    infos = _inspect_masks(masks or {}) if infos is None else infos
    mask_paths = {k: (Path(v), infos[k]) for k, v in (masks or {}).items()}
    tree = [*vectors, *_raster_layers(out.parent, mask_paths, imagery)]
    if crs is not None:
        project_crs = _norm_crs(crs, what="project crs")
    elif infos:
        project_crs = next(iter(infos.values())).crs
    else:
        assert fallback_crs is not None
        project_crs = fallback_crs
    with _atomic(out, overwrite=overwrite) as tmp:
        _write_project_to(tmp, out, tree, project_crs)
    return out


def imagery_layer(path: Path, project_dir: Path, *, name: str = "scene") -> ProjectLayer:
    """The source scene as the bottom layer: bands 1-3 as RGB (or band 1 grey), stretched.

    The source is relative to the project folder when the scene is at most two
    folders up from it (the project and scene move together), else absolute. A
    project written in a run's staging folder (:data:`~terraseg.io.objstore.STAGE_DIR`)
    is placed as from the folder it is published to, its parent.
    """
    if project_dir.name == STAGE_DIR:
        project_dir = project_dir.parent
    relative = Path(os.path.relpath(path.resolve(), project_dir.resolve())).as_posix()
    source = (
        relative if relative.startswith("../") else f"./{relative}"
    ) if relative.count("../") <= 2 else path.resolve().as_posix()
    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise ExportError(f"scene '{path}' has no CRS; it cannot be placed in the project",
                              path=path)
        crs = pyproj.CRS.from_user_input(ds.crs.to_wkt())
        bounds = (ds.bounds.left, ds.bounds.bottom, ds.bounds.right, ds.bounds.top)
        count = ds.count
        scale = max(1, int(np.ceil(max(ds.height, ds.width) / 512)))
        sample = ds.read(list(range(1, min(count, 3) + 1)), masked=True,
                         out_shape=(min(count, 3), max(1, ds.height // scale),
                                    max(1, ds.width // scale)))
    lo = [float(np.percentile(b.compressed(), 2)) if b.count() else 0.0 for b in sample]
    hi = [float(np.percentile(b.compressed(), 98)) if b.count() else 255.0 for b in sample]
    pipe = ET.Element("pipe")
    if count >= 3:
        r = ET.SubElement(pipe, "rasterrenderer", type="multibandcolor", opacity="1",
                          alphaBand="-1", redBand="1", greenBand="2", blueBand="3")
        enhancements: tuple[str, ...] = (
            "redContrastEnhancement", "greenContrastEnhancement", "blueContrastEnhancement"
        )
    else:
        r = ET.SubElement(pipe, "rasterrenderer", type="singlebandgray", opacity="1",
                          alphaBand="-1", grayBand="1", gradient="BlackToWhite")
        enhancements = ("contrastEnhancement",)
    ET.SubElement(r, "rasterTransparency")
    for k, tag in enumerate(enhancements):
        enh = ET.SubElement(r, tag)
        ET.SubElement(enh, "minValue").text = num(lo[k])
        ET.SubElement(enh, "maxValue").text = num(max(hi[k], lo[k] + 1))
        ET.SubElement(enh, "algorithm").text = "StretchToMinimumMaximum"
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    return ProjectLayer(name=name, kind="raster", source=source, crs=crs, extent=bounds,
                        style=(pipe,), visible=True)


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
    files = {k: Path(v) for k, v in (vector_files or {}).items()}
    vectors = vector_project_layers(out.parent, checked, chosen,
                                    gpkg=None if gpkg is None else Path(gpkg), vector_files=files)
    layers_crs = (pyproj.CRS.from_user_input(next(iter(checked.values())).crs)
                  if checked else None)
    return _write_project(out, vectors, masks, None, crs, layers_crs, overwrite=overwrite)
