"""QGIS project files (``.qgz``) written without QGIS.

A ``.qgz`` is a zip holding one ``<name>.qgs``: the project XML. This module
writes the subset of the QGIS 3.22 project format that a results project
needs: a project CRS, a layer tree, the map layers (GeoPackage/FlatGeobuf
vectors through the ``ogr`` provider, rasters through ``gdal``) with their
styles, and ``Paths/Absolute = false`` so data sources are stored relative to
the project file (``./scene.gpkg|layername=buildings``) and the folder can be
moved or shared as a whole.
"""

from __future__ import annotations

import os
import uuid
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyproj
import rasterio
from rasterio.enums import Resampling

from terraseg.export.qgis_renderers import QGIS_XML_VERSION, QML_DOCTYPE, RGBA, GeometryKind, num
from terraseg.export.qgis_styles import BUILDING_RGB, VectorStyle
from terraseg.export.sld import hex_rgb
from terraseg.io.raster_sink import read_class_names
from terraseg.models.spec import DEFAULT_CLASSES

__all__ = [
    "ProjectLayer",
    "RasterInfo",
    "crs_xml",
    "inspect_raster",
    "project_extent",
    "project_xml",
    "raster_layer",
    "raster_renderer_xml",
    "same_crs",
    "vector_layer",
    "write_qgz",
]

Bounds = tuple[float, float, float, float]
_GEOMETRY_ATTR: dict[GeometryKind | None, str] = {
    "point": "Point",
    "line": "Line",
    "polygon": "Polygon",
    None: "No geometry",
}
_ID_NAMESPACE = uuid.UUID("6f1d2a3e-9c59-4b8e-8d0a-2f3c7d6c1e42")


@dataclass(frozen=True, slots=True)
class ProjectLayer:
    """One map layer of a project.

    Attributes
    ----------
    name
        Layer name shown in the layer tree.
    kind
        ``"vector"`` (with geometry), ``"table"`` (no geometry) or ``"raster"``.
    source
        Data source relative to the project folder, in QGIS syntax:
        ``./scene.gpkg|layername=buildings`` or ``./classes.tif``.
    crs
        Layer CRS (``None`` for a table).
    extent
        ``(xmin, ymin, xmax, ymax)`` in the layer CRS, or ``None``.
    style
        Elements appended to ``<maplayer>``: a vector renderer (see
        :meth:`terraseg.export.qgis_styles.VectorStyle.qml_elements`) or a raster
        ``<pipe>``.
    geometry
        Geometry kind of a vector layer.
    wkb_type
        OGC geometry type name, e.g. ``"MultiPolygon"`` (``"NoGeometry"`` for tables).
    visible
        Checked in the layer tree.
    """

    name: str
    kind: Literal["vector", "table", "raster"]
    source: str
    crs: pyproj.CRS | None = None
    extent: Bounds | None = None
    style: Sequence[ET.Element] = field(default_factory=tuple)
    geometry: GeometryKind | None = None
    wkb_type: str = "NoGeometry"
    visible: bool = True

    @property
    def provider(self) -> str:
        """QGIS data provider key."""
        return "gdal" if self.kind == "raster" else "ogr"

    def layer_id(self, project: str) -> str:
        """A stable QGIS layer id (``<name>_<uuid>``), the same for the same project and name."""
        key = f"{project}/{self.kind}/{self.source}"
        return f"{self.name}_{uuid.uuid5(_ID_NAMESPACE, key).hex}"


def same_crs(a: pyproj.CRS, b: pyproj.CRS) -> bool:
    """Whether two CRSs are the same for display (same EPSG code, or equal ignoring axis order).

    Examples
    --------
    >>> same_crs(pyproj.CRS("EPSG:4326"), pyproj.CRS("OGC:CRS84"))
    True
    """
    if a == b:
        return True
    epsg_a = a.to_epsg()
    return (epsg_a is not None and epsg_a == b.to_epsg()) or a.equals(b, ignore_axis_order=True)


def vector_layer(
    name: str,
    source: str,
    style: VectorStyle,
    *,
    crs: pyproj.CRS,
    extent: Bounds | None,
    wkb_type: str,
) -> ProjectLayer:
    """A project vector layer drawn with ``style`` (the renderer is embedded in the project)."""
    return ProjectLayer(
        name=name,
        kind="vector",
        source=source,
        crs=crs,
        extent=extent,
        style=tuple(style.qml_elements()),
        geometry=style.geometry,
        wkb_type=wkb_type,
    )


def project_extent(layers: Sequence[ProjectLayer], crs: pyproj.CRS) -> Bounds | None:
    """Union of the layers' extents in ``crs`` (``None`` when no layer has one)."""
    boxes = []
    for layer in layers:
        if layer.extent is None or layer.crs is None:
            continue
        if same_crs(layer.crs, crs):
            boxes.append(layer.extent)
        else:
            transformer = pyproj.Transformer.from_crs(layer.crs, crs, always_xy=True)
            boxes.append(transformer.transform_bounds(*layer.extent))
    if not boxes:
        return None
    arr = np.asarray(boxes, dtype=float)
    lo, hi = arr[:, :2].min(axis=0), arr[:, 2:].max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def crs_xml(crs: pyproj.CRS) -> ET.Element:
    """``<spatialrefsys>`` QGIS reads: by authority id when there is one, else by WKT.

    Examples
    --------
    >>> el = crs_xml(pyproj.CRS("EPSG:32633"))
    >>> el.findtext("authid"), el.findtext("geographicflag")
    ('EPSG:32633', 'false')
    """
    el = ET.Element("spatialrefsys", nativeFormat="Wkt")
    ET.SubElement(el, "wkt").text = crs.to_wkt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "may lose information": only a fallback here
        try:
            proj4 = crs.to_proj4() or ""
        except pyproj.exceptions.CRSError:
            proj4 = ""
    ET.SubElement(el, "proj4").text = proj4
    authority = crs.to_authority(min_confidence=90)
    code = f"{authority[0]}:{authority[1]}" if authority else ""
    ET.SubElement(el, "srid").text = authority[1] if authority and authority[1].isdigit() else "0"
    ET.SubElement(el, "authid").text = code
    ET.SubElement(el, "description").text = crs.name
    ET.SubElement(el, "geographicflag").text = "true" if crs.is_geographic else "false"
    return el


def _extent_xml(tag: str, bounds: Bounds) -> ET.Element:
    el = ET.Element(tag)
    for name, value in zip(("xmin", "ymin", "xmax", "ymax"), bounds, strict=True):
        ET.SubElement(el, name).text = repr(float(value))
    return el


def _maplayer_xml(layer: ProjectLayer, layer_id: str) -> ET.Element:
    if layer.kind == "raster":
        el = ET.Element("maplayer", type="raster")
    else:
        el = ET.Element(
            "maplayer",
            type="vector",
            geometry=_GEOMETRY_ATTR[layer.geometry if layer.kind == "vector" else None],
            wkbType=layer.wkb_type if layer.kind == "vector" else "NoGeometry",
            readOnly="0",
            labelsEnabled="0",
        )
    el.attrib.update(
        hasScaleBasedVisibilityFlag="0",
        minScale="1e+08",
        maxScale="0",
        autoRefreshEnabled="0",
        autoRefreshTime="0",
        refreshOnNotifyEnabled="0",
        refreshOnNotifyMessage="",
        styleCategories="AllStyleCategories",
    )
    if layer.extent is not None:
        el.append(_extent_xml("extent", layer.extent))
    ET.SubElement(el, "id").text = layer_id
    ET.SubElement(el, "datasource").text = layer.source
    ET.SubElement(el, "layername").text = layer.name
    if layer.crs is not None:
        ET.SubElement(el, "srs").append(crs_xml(layer.crs))
    ET.SubElement(el, "provider", encoding="UTF-8").text = layer.provider
    flags = ET.SubElement(el, "flags")
    for name, value in (("Identifiable", "1"), ("Removable", "1"), ("Searchable", "1")):
        ET.SubElement(flags, name).text = value
    el.extend(layer.style)
    if layer.kind == "raster":
        ET.SubElement(el, "blendMode").text = "0"
    return el


def project_xml(
    *,
    title: str,
    layers: Sequence[ProjectLayer],
    crs: pyproj.CRS,
    extent: Bounds | None = None,
) -> str:
    """The ``.qgs`` document of a project (QGIS 3.22 format).

    Parameters
    ----------
    title
        Project title (also seeds the layer ids).
    layers
        Map layers, top of the layer tree (drawn last) first.
    crs
        Project (map canvas) CRS.
    extent
        Initial map extent in ``crs``; default: all layers (:func:`project_extent`).
    """
    extent = extent if extent is not None else project_extent(layers, crs)
    root = ET.Element("qgis", projectname=title, version=QGIS_XML_VERSION)
    ET.SubElement(root, "homePath", path="")
    ET.SubElement(root, "title").text = title
    ET.SubElement(root, "autotransaction", active="0")
    ET.SubElement(root, "evaluateDefaultValues", active="0")
    ET.SubElement(root, "trust", active="0")
    ET.SubElement(root, "projectCrs").append(crs_xml(crs))
    ids = [layer.layer_id(title) for layer in layers]

    tree = ET.SubElement(root, "layer-tree-group")
    ET.SubElement(tree, "customproperties")
    for layer, layer_id in zip(layers, ids, strict=True):
        node = ET.SubElement(
            tree,
            "layer-tree-layer",
            id=layer_id,
            name=layer.name,
            source=layer.source,
            providerKey=layer.provider,
            checked="Qt::Checked" if layer.visible else "Qt::Unchecked",
            expanded="1" if layer.kind != "table" else "0",
            legend_exp="",
        )
        ET.SubElement(node, "customproperties")
    ET.SubElement(tree, "custom-order", enabled="0")

    canvas = ET.SubElement(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    ET.SubElement(canvas, "units").text = "degrees" if crs.is_geographic else "meters"
    if extent is not None:
        canvas.append(_extent_xml("extent", extent))
    ET.SubElement(canvas, "rotation").text = "0"
    ET.SubElement(canvas, "destinationsrs").append(crs_xml(crs))
    ET.SubElement(canvas, "rendermaptile").text = "0"

    project_layers = ET.SubElement(root, "projectlayers")
    for layer, layer_id in zip(layers, ids, strict=True):
        project_layers.append(_maplayer_xml(layer, layer_id))
    order = ET.SubElement(root, "layerorder")
    for layer_id in ids:
        ET.SubElement(order, "layer", id=layer_id)

    props = ET.SubElement(root, "properties")
    srs = ET.SubElement(props, "SpatialRefSys")  # without it QGIS ignores <projectCrs>
    ET.SubElement(srs, "ProjectionsEnabled", type="int").text = "1"
    paths = ET.SubElement(props, "Paths")
    ET.SubElement(paths, "Absolute", type="bool").text = "false"
    ET.indent(root, space=" ")
    return f"{QML_DOCTYPE}\n{ET.tostring(root, encoding='unicode')}\n"


def write_qgz(path: str | os.PathLike[str], qgs_name: str, document: str) -> Path:
    """Write ``document`` as ``<qgs_name>.qgs`` inside the zip ``path`` (a ``.qgz``).

    Writes ``path`` directly; callers wanting atomicity pass a temporary path.
    """
    out = Path(path)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{qgs_name}.qgs", document.encode("utf-8"))
    return out


#: Qualitative palette cycled over instance ids (Tableau 10 + 2).
INSTANCE_PALETTE = (
    (78, 121, 167), (242, 142, 43), (225, 87, 89), (118, 183, 178), (89, 161, 79),
    (237, 201, 72), (176, 122, 161), (255, 157, 167), (156, 117, 95), (186, 176, 172),
    (31, 119, 180), (188, 189, 34),
)  # fmt: skip


# ----------------------------------------------------------------- rasters


def raster_renderer_xml(
    *,
    kind: Literal["paletted", "instances", "continuous"],
    palette: Mapping[int, tuple[RGBA, str]] | None = None,
    value_range: tuple[float, float] = (0.0, 255.0),
    band: int = 1,
) -> ET.Element:
    """The ``<pipe>`` of a QGIS raster layer.

    Parameters
    ----------
    kind
        ``"paletted"``: one colour per class value (``palette`` gives
        ``{value: ((r, g, b, a), label)}``); ``"instances"``: ids cycle
        through :data:`INSTANCE_PALETTE` (0 transparent) between
        ``value_range``; ``"continuous"``: a grey-to-colour ramp over
        ``value_range``.
    palette
        Class colours and labels for ``"paletted"``.
    value_range
        ``(min, max)`` pixel values for ``"instances"`` and ``"continuous"``.
    band
        The band drawn by ``"instances"`` and ``"continuous"``.
    """
    pipe = ET.Element("pipe")
    if kind == "paletted":
        r = ET.SubElement(
            pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1"
        )
        r.set("nodataColor", "")
        ET.SubElement(r, "rasterTransparency")
        pal = ET.SubElement(r, "colorPalette")
        for value, (rgba, label) in sorted((palette or {}).items()):
            ET.SubElement(
                pal,
                "paletteEntry",
                value=str(value),
                color=hex_rgb(rgba),
                alpha=str(rgba[3]),
                label=label,
            )
    else:
        lo, hi = value_range
        r = ET.SubElement(
            pipe,
            "rasterrenderer",
            type="singlebandpseudocolor",
            band=str(band),
            opacity="1",
            alphaBand="-1",
            classificationMin=num(lo),
            classificationMax=num(hi),
            nodataColor="",
        )
        transparency = ET.SubElement(r, "rasterTransparency")
        if kind == "instances":
            pixels = ET.SubElement(transparency, "singleValuePixelList")
            ET.SubElement(pixels, "pixelListEntry", min="0", max="0", percentTransparent="100")
        origin = ET.SubElement(r, "minMaxOrigin")
        for tag, text in (("limits", "None"), ("extent", "WholeRaster")):
            ET.SubElement(origin, tag).text = text
        shader = ET.SubElement(ET.SubElement(r, "rastershader"), "colorrampshader")
        shader.attrib.update(minimumValue=num(lo), maximumValue=num(hi), clip="0")
        if kind == "instances":
            shader.attrib.update(colorRampType="DISCRETE", classificationMode="2")
            for bound, colour in _instance_items(lo, hi):
                item = ET.SubElement(shader, "item", value=num(bound), color=hex_rgb(colour))
                item.attrib.update(alpha="255", label="")
        else:
            shader.attrib.update(colorRampType="INTERPOLATED", classificationMode="1")
            for bound, rgb in ((lo, (20, 20, 20)), (hi, BUILDING_RGB)):
                item = ET.SubElement(shader, "item", value=num(bound), color=hex_rgb(rgb))
                item.attrib.update(alpha="255", label=num(bound))
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    return pipe


def _instance_items(lo: float, hi: float, max_items: int = 256) -> list[tuple[float, RGBA]]:
    """Upper bounds of DISCRETE classes over ids ``lo..hi`` cycling a qualitative palette.

    With at most ``max_items`` ids each id gets its own colour; beyond that
    neighbouring ids share a class.

    Examples
    --------
    >>> [v for v, _ in _instance_items(1, 4)]
    [1.0, 2.0, 3.0, 4.0]
    >>> len(_instance_items(1, 10_000))
    256
    """
    lo, hi = max(float(lo), 1.0), max(float(hi), 1.0)
    n = int(min(max_items, hi - lo + 1))
    bounds = np.linspace(lo, hi, n) if n > 1 else np.array([hi])
    if n == int(hi - lo + 1):
        bounds = np.arange(lo, hi + 1)
    palette = INSTANCE_PALETTE
    return [(float(b), (*palette[i % len(palette)], 255)) for i, b in enumerate(bounds)]


# ----------------------------------------------------------------- raster layers


@dataclass(frozen=True, slots=True)
class RasterInfo:
    """What a project needs to know about a mask raster.

    Attributes
    ----------
    crs
        Raster CRS.
    bounds
        ``(xmin, ymin, xmax, ymax)`` in ``crs``.
    dtype
        Band 1 data type name.
    colormap
        Band 1 colour table ``{value: (r, g, b, a)}``, empty when there is none.
    class_names
        ``{value: name}`` written by :class:`~terraseg.io.raster_sink.RasterSink`.
    value_max
        Largest value seen on an overview-sized read of the shown band (for
        instance id colours).
    band
        The band a project shows: 1, or 2 for a 2-band ``(class, instance id)``
        panoptic raster (its ids).
    """

    crs: pyproj.CRS
    bounds: Bounds
    dtype: str
    colormap: dict[int, RGBA]
    class_names: dict[int, str]
    value_max: float
    band: int = 1


def inspect_raster(path: str | os.PathLike[str], *, sample_px: int = 1024) -> RasterInfo:
    """Read a raster's grid, colour table, class names and a value range (from overviews).

    Reads at most ``sample_px`` pixels along the longer side (GDAL takes an
    overview), never the full raster.
    """
    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise ValueError(f"raster '{path}' has no CRS")
        try:
            colormap = {int(k): _rgba4(v) for k, v in ds.colormap(1).items()}
        except ValueError:  # no colour table
            colormap = {}
        scale = max(1, int(np.ceil(max(ds.height, ds.width) / sample_px)))
        shape = (max(1, ds.height // scale), max(1, ds.width // scale))
        band = 2 if ds.count == 2 and ds.descriptions[1] == "building_id" else 1
        sample = ds.read(band, out_shape=shape, resampling=Resampling.nearest, masked=True)
        value_max = float(sample.max()) if sample.count() else 0.0
        return RasterInfo(
            crs=pyproj.CRS.from_user_input(ds.crs.to_wkt()),
            bounds=(ds.bounds.left, ds.bounds.bottom, ds.bounds.right, ds.bounds.top),
            dtype=str(ds.dtypes[0]),
            colormap=colormap,
            class_names=read_class_names(path),
            value_max=value_max,
            band=band,
        )


def _rgba4(value: Sequence[int]) -> RGBA:
    r, g, b, *rest = (int(v) for v in value)
    return r, g, b, rest[0] if rest else 255


def raster_layer(name: str, source: str, info: RasterInfo, *, visible: bool = True) -> ProjectLayer:
    """A project raster layer styled from its colour table and class names.

    * a colour table: paletted, one entry per named class (names from the
      raster, else :data:`~terraseg.models.spec.DEFAULT_CLASSES`), class 0 /
      ``background`` transparent;
    * an integer raster without one (instance ids): ids cycle through a
      qualitative palette, 0 transparent;
    * anything else: a continuous ramp over ``0..value_max``.
    """
    if info.colormap:
        names = info.class_names or {c.id: c.name for c in DEFAULT_CLASSES}
        defaults = {c.id: (*c.color, 255) for c in DEFAULT_CLASSES}
        palette: dict[int, tuple[RGBA, str]] = {}
        for value, label in sorted(names.items()):
            r, g, b, a = info.colormap.get(value, defaults.get(value, (128, 128, 128, 255)))
            if value == 0 or label == "background":
                a = 0
            palette[value] = ((r, g, b, a), label)
        pipe = raster_renderer_xml(kind="paletted", palette=palette)
    elif np.issubdtype(np.dtype(info.dtype), np.integer):
        pipe = raster_renderer_xml(
            kind="instances", value_range=(1.0, max(info.value_max, 1.0)), band=info.band
        )
    else:
        pipe = raster_renderer_xml(kind="continuous", value_range=(0.0, info.value_max or 1.0))
    return ProjectLayer(
        name=name,
        kind="raster",
        source=source,
        crs=info.crs,
        extent=info.bounds,
        style=(pipe,),
        visible=visible,
    )
