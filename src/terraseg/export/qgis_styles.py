"""QGIS vector styles written without QGIS: QML (QGIS style XML) and SLD, and the
GeoPackage ``layer_styles`` table QGIS loads default styles from.

A style is described by small frozen dataclasses (:class:`Symbol`, a renderer,
:class:`VectorStyle`) and serialised to the XML QGIS 3.22 itself writes, so the
same description gives

* the ``styleQML``/``styleSLD`` of a GeoPackage ``layer_styles`` row, and
* the renderer inside a ``<maplayer>`` of a QGIS project.

Symbol layers carry both the ``<Option type="Map">`` form (QGIS >= 3.16 reads
it) and the older ``<prop k= v=>`` form (QGIS < 3.16), as QGIS 3.22 writes them.
Sizes are millimetres on the map (``MM`` units).
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd

from terraseg.errors import ExportError
from terraseg.models.spec import DEFAULT_CLASSES

__all__ = [
    "QGIS_XML_VERSION",
    "Category",
    "CategorizedRenderer",
    "GeometryKind",
    "GraduatedRenderer",
    "Range",
    "Renderer",
    "SingleRenderer",
    "Symbol",
    "VectorStyle",
    "default_vector_style",
    "read_layer_styles",
    "write_layer_styles",
]

#: Version stamped on QML and project files: the oldest QGIS whose format we write.
QGIS_XML_VERSION = "3.22.0-Białowieża"
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"

RGBA: TypeAlias = tuple[int, int, int, int]
GeometryKind: TypeAlias = Literal["point", "line", "polygon"]
_SYMBOL_TYPE: dict[GeometryKind, str] = {"point": "marker", "line": "line", "polygon": "fill"}
#: QgsWkbTypes::GeometryType as QML ``layerGeometryType``.
GEOMETRY_TYPE_CODE: dict[GeometryKind, int] = {"point": 0, "line": 1, "polygon": 2}
_MM_TO_PX = 1 / 0.28  # SLD pixels are 0.28 mm (OGC standardized rendering pixel)

_CLASS_COLOURS = {c.name: c.color for c in DEFAULT_CLASSES}
BUILDING_RGB: tuple[int, int, int] = _CLASS_COLOURS.get("building", (230, 57, 70))
ROAD_RGB: tuple[int, int, int] = _CLASS_COLOURS.get("road", (255, 209, 102))
CENTERLINE_RGB = (214, 110, 0)
#: Building score classes (upper bounds inclusive); scores outside [0, 1] use equal intervals.
SCORE_BREAKS = (0.0, 0.5, 0.7, 0.85, 1.0)
#: Road-graph node categories by degree: value, label, colour.
DEGREE_CATEGORIES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (1, "dead end", (215, 25, 28)),
    (2, "through node", (140, 140, 140)),
    (3, "3-way junction", (43, 131, 186)),
    (4, "4-way junction", (94, 60, 153)),
)


# ----------------------------------------------------------------- description


@dataclass(frozen=True, slots=True)
class Symbol:
    """One simple symbol: a fill, a line or a circle marker.

    Attributes
    ----------
    kind
        ``"polygon"`` (SimpleFill), ``"line"`` (SimpleLine) or ``"point"``
        (SimpleMarker, a circle).
    color
        RGBA fill colour (polygon, point) or line colour (line).
    stroke
        RGBA outline colour (polygon, point); ignored for lines.
    width_mm
        Outline width (polygon, point) or line width (line), millimetres.
    size_mm
        Marker diameter, millimetres (points only).
    filled
        ``False`` draws a polygon's outline only (``style="no"`` brush).
    """

    kind: GeometryKind
    color: RGBA
    stroke: RGBA = (35, 35, 35, 255)
    width_mm: float = 0.26
    size_mm: float = 2.0
    filled: bool = True


@dataclass(frozen=True, slots=True)
class SingleRenderer:
    """Every feature drawn with one symbol (QGIS ``singleSymbol``)."""

    symbol: Symbol
    type: Literal["singleSymbol"] = "singleSymbol"


@dataclass(frozen=True, slots=True)
class Range:
    """One class of a graduated renderer: ``lower <= value <= upper``."""

    lower: float
    upper: float
    label: str
    symbol: Symbol


@dataclass(frozen=True, slots=True)
class GraduatedRenderer:
    """Features classed by ranges of a numeric attribute (QGIS ``graduatedSymbol``)."""

    attr: str
    ranges: tuple[Range, ...]
    method: Literal["GraduatedColor", "GraduatedSize"] = "GraduatedColor"
    type: Literal["graduatedSymbol"] = "graduatedSymbol"


@dataclass(frozen=True, slots=True)
class Category:
    """One class of a categorized renderer; ``value=None`` is "all other values"."""

    value: int | str | None
    label: str
    symbol: Symbol


@dataclass(frozen=True, slots=True)
class CategorizedRenderer:
    """Features classed by the value of an attribute (QGIS ``categorizedSymbol``)."""

    attr: str
    categories: tuple[Category, ...]
    type: Literal["categorizedSymbol"] = "categorizedSymbol"


Renderer: TypeAlias = SingleRenderer | GraduatedRenderer | CategorizedRenderer


@dataclass(frozen=True, slots=True)
class VectorStyle:
    """The style of one vector layer, as QML and SLD.

    Attributes
    ----------
    layer
        Layer (table) name the style belongs to.
    geometry
        Geometry kind of the layer; QGIS refuses a style of another kind.
    renderer
        How features are drawn.
    title
        Human-readable style name (``styleName`` in ``layer_styles``).
    description
        One line for ``layer_styles.description``.
    """

    layer: str
    geometry: GeometryKind
    renderer: Renderer
    title: str
    description: str = ""

    @property
    def renderer_type(self) -> str:
        """QGIS renderer type name, e.g. ``"graduatedSymbol"``."""
        return self.renderer.type

    def qml_elements(self) -> list[ET.Element]:
        """The children of ``<qgis>`` (QML) or ``<maplayer>`` (project) for this style."""
        return [
            _renderer_xml(self.renderer),
            _text("blendMode", "0"),
            _text("featureBlendMode", "0"),
            _text("layerOpacity", "1"),
            _text("layerGeometryType", str(GEOMETRY_TYPE_CODE[self.geometry])),
        ]

    def to_qml(self) -> str:
        """The style as a QGIS ``.qml`` document (QGIS 3.22 format)."""
        root = ET.Element(
            "qgis", version=QGIS_XML_VERSION, styleCategories="Symbology", labelsEnabled="0"
        )
        root.extend(self.qml_elements())
        return _serialise(root, doctype=QML_DOCTYPE)

    def to_sld(self) -> str:
        """The style as an OGC SLD 1.1 document (Symbology Encoding rules)."""
        return _sld_document(self)


# ----------------------------------------------------------------- choosing styles


def geometry_kind(geom_types: Sequence[str], layer: str) -> GeometryKind:
    """Geometry kind from the geometry type names of a layer's features.

    Falls back on the layer name (``*nodes`` points, ``*lines``/``*edges``
    lines, else polygons) when the layer is empty.

    Examples
    --------
    >>> geometry_kind(["Polygon", "MultiPolygon"], "buildings")
    'polygon'
    >>> geometry_kind([], "road_centerlines")
    'line'
    """
    unknown = sorted({t for t in geom_types if t and t.removeprefix("Multi") not in _KIND_OF_TYPE})
    if unknown:
        raise ValueError(
            f"layer '{layer}' holds {unknown} geometries; export points, lines or polygons "
            "(explode collections first)"
        )
    kinds = {_KIND_OF_TYPE[t.removeprefix("Multi")] for t in geom_types if t}
    if len(kinds) == 1:
        return kinds.pop()
    if len(kinds) > 1:
        raise ValueError(
            f"layer '{layer}' mixes geometry kinds {sorted(str(k) for k in kinds)}; "
            "split it into one layer per kind"
        )
    if layer.endswith("nodes"):
        return "point"
    if layer.endswith(("lines", "edges")):
        return "line"
    return "polygon"


_KIND_OF_TYPE: dict[str, GeometryKind] = {
    "Point": "point",
    "LineString": "line",
    "LinearRing": "line",
    "Polygon": "polygon",
}


def default_vector_style(layer: str, geometry: GeometryKind, frame: pd.DataFrame) -> VectorStyle:
    """The style terraseg gives a layer it knows by name, or a neutral one.

    * ``buildings``: graduated fill by ``score`` (classes of :data:`SCORE_BREAKS`)
      or, without scores, an outline in the building class colour;
    * ``roads``: filled in the road class colour;
    * ``road_centerlines``: line width graduated by ``width_m``, else one line;
    * ``road_nodes``: categorized by ``degree`` (dead end, through, junctions);
    * ``road_edges`` and anything else: one simple symbol.

    Parameters
    ----------
    layer
        Layer name.
    geometry
        Geometry kind of the layer.
    frame
        The layer's attributes (only numeric columns named above are read).
    """
    if geometry == "polygon" and layer == "buildings":
        scores = _numeric(frame, "score")
        if scores is not None:
            return VectorStyle(
                layer,
                geometry,
                _score_renderer(scores),
                "terraseg buildings by score",
                "building polygons coloured by model score",
            )
        outline = Symbol("polygon", (*BUILDING_RGB, 0), (*BUILDING_RGB, 255), 0.5, filled=False)
        return VectorStyle(
            layer, geometry, SingleRenderer(outline), "terraseg buildings", "building outlines"
        )
    if geometry == "polygon" and layer == "roads":
        fill = Symbol("polygon", (*ROAD_RGB, 200), (*_shade(ROAD_RGB, 0.7), 255), 0.2)
        return VectorStyle(layer, geometry, SingleRenderer(fill), "terraseg roads", "road areas")
    if geometry == "line" and layer == "road_centerlines":
        widths = _numeric(frame, "width_m")
        if widths is not None and float(widths.max()) > float(widths.min()):
            return VectorStyle(
                layer,
                geometry,
                _width_renderer(widths),
                "terraseg centerlines by width",
                "road centerlines, line width by road width",
            )
        line = Symbol("line", (*CENTERLINE_RGB, 255), width_mm=0.6)
        return VectorStyle(
            layer, geometry, SingleRenderer(line), "terraseg centerlines", "road centerlines"
        )
    if geometry == "point" and layer == "road_nodes" and _numeric(frame, "degree") is not None:
        return VectorStyle(
            layer,
            geometry,
            _degree_renderer(),
            "terraseg road nodes by degree",
            "road graph nodes: dead ends and junctions",
        )
    neutral = {
        "point": Symbol("point", (43, 131, 186, 255), (255, 255, 255, 255), 0.2, 1.8),
        "line": Symbol("line", (*_shade(CENTERLINE_RGB, 0.8), 255), width_mm=0.4),
        "polygon": Symbol("polygon", (120, 120, 120, 120), (60, 60, 60, 255), 0.26),
    }[geometry]
    return VectorStyle(layer, geometry, SingleRenderer(neutral), f"terraseg {layer}", layer)


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """The finite values of a numeric column, or ``None`` when there are none."""
    if column not in frame.columns or not pd.api.types.is_numeric_dtype(frame[column]):
        return None
    values = pd.to_numeric(frame[column], errors="coerce")
    values = values[np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))]
    return values if len(values) else None


def _score_renderer(scores: pd.Series) -> GraduatedRenderer:
    lo, hi = float(scores.min()), float(scores.max())
    if lo >= SCORE_BREAKS[0] and hi <= SCORE_BREAKS[-1]:
        breaks = list(SCORE_BREAKS)
    else:
        breaks = list(np.linspace(lo, hi if hi > lo else lo + 1, len(SCORE_BREAKS)))
    n = len(breaks) - 1
    pale, dark = _mix(BUILDING_RGB, (255, 255, 255), 0.7), _shade(BUILDING_RGB, 0.6)
    ranges = []
    for i in range(n):
        t = 2 * i / (n - 1)  # pale -> class colour -> dark
        rgb = _mix(pale, BUILDING_RGB, t) if t <= 1 else _mix(BUILDING_RGB, dark, t - 1)
        fill = Symbol("polygon", (*rgb, 210), (*_shade(BUILDING_RGB, 0.55), 255), 0.26)
        label = f"score {breaks[i]:.2f} – {breaks[i + 1]:.2f}"
        ranges.append(Range(float(breaks[i]), float(breaks[i + 1]), label, fill))
    return GraduatedRenderer("score", tuple(ranges), "GraduatedColor")


def _width_renderer(widths: pd.Series) -> GraduatedRenderer:
    lo, hi = float(widths.min()), float(widths.max())
    n = 4
    breaks = np.linspace(lo, hi, n + 1)
    ranges = tuple(
        Range(
            float(breaks[i]),
            float(breaks[i + 1]),
            f"{breaks[i]:.1f} – {breaks[i + 1]:.1f} m wide",
            Symbol("line", (*CENTERLINE_RGB, 255), width_mm=round(0.3 + 0.35 * i, 2)),
        )
        for i in range(n)
    )
    return GraduatedRenderer("width_m", ranges, "GraduatedSize")


def _degree_renderer() -> CategorizedRenderer:
    def marker(rgb: tuple[int, int, int], size: float) -> Symbol:
        return Symbol("point", (*rgb, 255), (255, 255, 255, 255), 0.2, size)

    cats = [
        Category(v, text, marker(rgb, 1.6 if v == 2 else 2.4)) for v, text, rgb in DEGREE_CATEGORIES
    ]
    cats.append(Category(None, "other degree", marker((0, 0, 0), 2.4)))
    return CategorizedRenderer("degree", tuple(cats))


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> tuple[int, int, int]:
    """Linear mix of two RGB colours (``t=0`` gives ``a``).

    Examples
    --------
    >>> _mix((0, 0, 0), (255, 255, 255), 0.5)
    (128, 128, 128)
    """
    t = min(max(t, 0.0), 1.0)
    r, g, b_ = (int(math.floor(x + (y - x) * t + 0.5)) for x, y in zip(a[:3], b[:3], strict=True))
    return r, g, b_


def _shade(rgb: Sequence[int], factor: float) -> tuple[int, int, int]:
    """Darken (``factor < 1``) an RGB colour."""
    return _mix((0, 0, 0), rgb, factor)


# ----------------------------------------------------------------- QML


def _text(tag: str, text: str, **attrib: str) -> ET.Element:
    el = ET.Element(tag, attrib)
    el.text = text
    return el


def _rgba(c: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in c)


def num(x: float) -> str:
    """Compact decimal for XML attributes (no exponent for ordinary values)."""
    return f"{x:.15g}"


def _symbol_props(s: Symbol) -> dict[str, str]:
    common = {"offset": "0,0", "offset_map_unit_scale": "3x:0,0,0,0,0,0", "offset_unit": "MM"}
    if s.kind == "polygon":
        return {
            **common,
            "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
            "color": _rgba(s.color),
            "joinstyle": "bevel",
            "outline_color": _rgba(s.stroke),
            "outline_style": "solid",
            "outline_width": num(s.width_mm),
            "outline_width_unit": "MM",
            "style": "solid" if s.filled else "no",
        }
    if s.kind == "line":
        return {
            **common,
            "capstyle": "round",
            "customdash": "5;2",
            "customdash_unit": "MM",
            "draw_inside_polygon": "0",
            "joinstyle": "round",
            "line_color": _rgba(s.color),
            "line_style": "solid",
            "line_width": num(s.width_mm),
            "line_width_unit": "MM",
            "use_custom_dash": "0",
        }
    return {
        **common,
        "angle": "0",
        "color": _rgba(s.color),
        "horizontal_anchor_point": "1",
        "joinstyle": "bevel",
        "name": "circle",
        "outline_color": _rgba(s.stroke),
        "outline_style": "solid",
        "outline_width": num(s.width_mm),
        "outline_width_unit": "MM",
        "scale_method": "diameter",
        "size": num(s.size_mm),
        "size_unit": "MM",
        "vertical_anchor_point": "1",
    }


_LAYER_CLASS = {"polygon": "SimpleFill", "line": "SimpleLine", "point": "SimpleMarker"}


def symbol_xml(s: Symbol, name: str) -> ET.Element:
    """``<symbol>`` element of a one-layer QGIS symbol."""
    el = ET.Element(
        "symbol",
        type=_SYMBOL_TYPE[s.kind],
        name=name,
        alpha="1",
        clip_to_extent="1",
        force_rhr="0",
    )
    layer = ET.SubElement(el, "layer", {"class": _LAYER_CLASS[s.kind]}, enabled="1", locked="0")
    layer.set("pass", "0")
    props = _symbol_props(s)
    option = ET.SubElement(layer, "Option", type="Map")
    for k, v in props.items():
        ET.SubElement(option, "Option", type="QString", name=k, value=v)
    for k, v in props.items():
        ET.SubElement(layer, "prop", k=k, v=v)
    return el


def _renderer_xml(r: Renderer) -> ET.Element:
    el = ET.Element(
        "renderer-v2",
        type=r.type,
        symbollevels="0",
        forceraster="0",
        enableorderby="0",
        referencescale="-1",
    )
    symbols = ET.Element("symbols")
    if isinstance(r, SingleRenderer):
        symbols.append(symbol_xml(r.symbol, "0"))
        el.append(symbols)
    elif isinstance(r, GraduatedRenderer):
        el.set("attr", r.attr)
        el.set("graduatedMethod", r.method)
        ranges = ET.SubElement(el, "ranges")
        for i, rng in enumerate(r.ranges):
            ET.SubElement(
                ranges,
                "range",
                symbol=str(i),
                lower=num(rng.lower),
                upper=num(rng.upper),
                label=rng.label,
                render="true",
            )
            symbols.append(symbol_xml(rng.symbol, str(i)))
        el.append(symbols)
        ET.SubElement(el, "classificationMethod", id="Fixed").append(
            _text("symmetricMode", "", enabled="0", symmetrypoint="0", astride="0")
        )
        ET.SubElement(el, "rotation")
        ET.SubElement(el, "sizescale")
    else:
        el.set("attr", r.attr)
        cats = ET.SubElement(el, "categories")
        for i, cat in enumerate(r.categories):
            value = "" if cat.value is None else str(cat.value)
            ET.SubElement(
                cats, "category", symbol=str(i), value=value, label=cat.label, render="true"
            )
            symbols.append(symbol_xml(cat.symbol, str(i)))
        el.append(symbols)
        ET.SubElement(el, "rotation")
        ET.SubElement(el, "sizescale")
    return el


def _serialise(root: ET.Element, *, doctype: str | None = None) -> str:
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return f"{doctype}\n{body}\n" if doctype else f"{body}\n"


# ----------------------------------------------------------------- SLD

_SLD_NS = {
    "xmlns": "http://www.opengis.net/sld",
    "xmlns:ogc": "http://www.opengis.net/ogc",
    "xmlns:se": "http://www.opengis.net/se",
    "xmlns:xlink": "http://www.w3.org/1999/xlink",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xsi:schemaLocation": "http://www.opengis.net/sld "
    "http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd",
    "version": "1.1.0",
}


def hex_rgb(c: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB(A) colour."""
    return "#{:02x}{:02x}{:02x}".format(*c[:3])


def _px(mm: float) -> str:
    return num(round(mm * _MM_TO_PX, 3))


def _param(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "se:SvgParameter", name=name).text = value


def _stroke(parent: ET.Element, color: Sequence[int], width_mm: float) -> None:
    stroke = ET.SubElement(parent, "se:Stroke")
    _param(stroke, "stroke", hex_rgb(color))
    if color[3] < 255:
        _param(stroke, "stroke-opacity", num(round(color[3] / 255, 3)))
    _param(stroke, "stroke-width", _px(width_mm))
    _param(stroke, "stroke-linejoin", "bevel")


def _sld_symbolizer(s: Symbol) -> ET.Element:
    if s.kind == "polygon":
        el = ET.Element("se:PolygonSymbolizer")
        if s.filled:
            fill = ET.SubElement(el, "se:Fill")
            _param(fill, "fill", hex_rgb(s.color))
            if s.color[3] < 255:
                _param(fill, "fill-opacity", num(round(s.color[3] / 255, 3)))
        _stroke(el, s.stroke, s.width_mm)
        return el
    if s.kind == "line":
        el = ET.Element("se:LineSymbolizer")
        _stroke(el, s.color, s.width_mm)
        return el
    el = ET.Element("se:PointSymbolizer")
    graphic = ET.SubElement(el, "se:Graphic")
    mark = ET.SubElement(graphic, "se:Mark")
    ET.SubElement(mark, "se:WellKnownName").text = "circle"
    fill = ET.SubElement(mark, "se:Fill")
    _param(fill, "fill", hex_rgb(s.color))
    _stroke(mark, s.stroke, s.width_mm)
    ET.SubElement(graphic, "se:Size").text = _px(s.size_mm)
    return el


def _ogc_compare(op: str, attr: str, value: float | int | str) -> ET.Element:
    el = ET.Element(f"ogc:{op}")
    ET.SubElement(el, "ogc:PropertyName").text = attr
    ET.SubElement(el, "ogc:Literal").text = str(value)
    return el


def _sld_rule(name: str, symbol: Symbol, flt: ET.Element | None) -> ET.Element:
    rule = ET.Element("se:Rule")
    ET.SubElement(rule, "se:Name").text = name
    ET.SubElement(ET.SubElement(rule, "se:Description"), "se:Title").text = name
    if flt is not None:
        ET.SubElement(rule, "ogc:Filter", {"xmlns:ogc": "http://www.opengis.net/ogc"}).append(flt)
    rule.append(_sld_symbolizer(symbol))
    return rule


def _sld_rules(r: Renderer) -> list[ET.Element]:
    if isinstance(r, SingleRenderer):
        return [_sld_rule("Single symbol", r.symbol, None)]
    if isinstance(r, GraduatedRenderer):
        rules = []
        for i, rng in enumerate(r.ranges):
            both = ET.Element("ogc:And")
            lower_op = "PropertyIsGreaterThanOrEqualTo" if i == 0 else "PropertyIsGreaterThan"
            both.append(_ogc_compare(lower_op, r.attr, num(rng.lower)))
            both.append(_ogc_compare("PropertyIsLessThanOrEqualTo", r.attr, num(rng.upper)))
            rules.append(_sld_rule(rng.label, rng.symbol, both))
        return rules
    rules = []
    known = [c.value for c in r.categories if c.value is not None]
    for cat in r.categories:
        if cat.value is not None:
            flt = _ogc_compare("PropertyIsEqualTo", r.attr, cat.value)
        else:
            flt = ET.Element("ogc:Not")
            anyof = ET.SubElement(flt, "ogc:Or") if len(known) > 1 else flt
            for v in known:
                anyof.append(_ogc_compare("PropertyIsEqualTo", r.attr, v))
        rules.append(_sld_rule(cat.label, cat.symbol, flt))
    return rules


def _sld_document(style: VectorStyle) -> str:
    root = ET.Element("StyledLayerDescriptor", _SLD_NS)
    layer = ET.SubElement(root, "NamedLayer")
    ET.SubElement(layer, "se:Name").text = style.layer
    user = ET.SubElement(layer, "UserStyle")
    ET.SubElement(user, "se:Name").text = style.layer
    fts = ET.SubElement(user, "se:FeatureTypeStyle")
    fts.extend(_sld_rules(style.renderer))
    return _serialise(root, doctype='<?xml version="1.0" encoding="UTF-8"?>')


# ----------------------------------------------------------------- GeoPackage layer_styles

_LAYER_STYLES_DDL = (
    'CREATE TABLE "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)
_OGR_COUNT_TRIGGERS = (
    'CREATE TRIGGER "trigger_insert_feature_count_layer_styles" AFTER INSERT ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
    'CREATE TRIGGER "trigger_delete_feature_count_layer_styles" AFTER DELETE ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
)
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        with conn:  # one transaction: committed on success, rolled back on error
            yield conn
    finally:
        conn.close()


def write_layer_styles(gpkg: str | os.PathLike[str], styles: Mapping[str, VectorStyle]) -> None:
    """Store ``styles`` as the default QGIS styles of their layers in ``gpkg`` (in place).

    Creates the ``layer_styles`` table exactly as QGIS 3.22 (through OGR) does:
    same columns and types, registered in ``gpkg_contents`` as
    ``attributes`` and counted in ``gpkg_ogr_contents`` by the same triggers.
    Each style becomes the only default (``useAsDefault = 1``) of its layer;
    a previous style of the same name is replaced, other styles are kept.

    Parameters
    ----------
    gpkg
        An existing GeoPackage holding the styled layers.
    styles
        ``{layer: style}``; the layer's geometry column is read from
        ``gpkg_geometry_columns``.

    Raises
    ------
    ExportError
        A styled layer is not a spatial table of ``gpkg``, or the file is not a GeoPackage.
    """
    path = Path(gpkg)
    try:
        with _sqlite(path) as conn:
            geom_cols = dict(
                conn.execute("SELECT table_name, column_name FROM gpkg_geometry_columns")
            )
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'layer_styles'"
            ).fetchone()
            if not exists:
                conn.execute(_LAYER_STYLES_DDL)
                conn.execute(
                    "INSERT INTO gpkg_contents (table_name, data_type, identifier, description,"
                    f" last_change, srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles',"
                    f" '', {_NOW_SQL}, 0)"
                )
                ogr_counts = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'gpkg_ogr_contents'"
                ).fetchone()
                if ogr_counts:
                    conn.execute(
                        "INSERT INTO gpkg_ogr_contents (table_name, feature_count) "
                        "VALUES ('layer_styles', 0)"
                    )
                    for trigger in _OGR_COUNT_TRIGGERS:
                        conn.execute(trigger)
            for layer, style in styles.items():
                if layer not in geom_cols:
                    raise ExportError(
                        f"cannot style '{layer}': it is not a spatial table of '{path}'",
                        path=path,
                        layer=layer,
                    )
                key = (layer, geom_cols[layer])
                conn.execute(
                    "UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_schema = '' "
                    "AND f_table_name = ? AND f_geometry_column = ?",
                    key,
                )
                conn.execute(
                    "DELETE FROM layer_styles WHERE f_table_schema = '' AND f_table_name = ? "
                    "AND f_geometry_column = ? AND styleName = ?",
                    (*key, style.title),
                )
                conn.execute(
                    "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                    "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, "
                    f"description, owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, "
                    f"'', NULL, {_NOW_SQL})",
                    (*key, style.title, style.to_qml(), style.to_sld(), style.description),
                )
    except sqlite3.DatabaseError as exc:
        raise ExportError(
            f"cannot write QGIS styles into '{path}': {exc}; is it a GeoPackage?", path=path
        ) from exc


def read_layer_styles(gpkg: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``gpkg``'s ``layer_styles`` table (``[]`` when there is none)."""
    with _sqlite(Path(gpkg)) as conn:
        conn.row_factory = sqlite3.Row
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'layer_styles'").fetchone():
            return []
        return [dict(row) for row in conn.execute("SELECT * FROM layer_styles ORDER BY id")]
