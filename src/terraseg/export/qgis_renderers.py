"""QGIS symbols and renderers: their description and their QML XML.

Small frozen dataclasses describe how a layer is drawn: a :class:`Symbol`
(a fill, a line or a circle marker) and a renderer (:class:`SingleRenderer`,
:class:`GraduatedRenderer` or :class:`CategorizedRenderer`). This module
serialises them to the ``<renderer-v2>`` and ``<symbol>`` XML QGIS 3.22 itself
writes, used in QML documents and in QGIS projects alike.

Symbol layers carry both the ``<Option type="Map">`` form (QGIS >= 3.16 reads
it) and the older ``<prop k= v=>`` form (QGIS < 3.16), as QGIS 3.22 writes them.
Sizes are millimetres on the map (``MM`` units).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "QGIS_XML_VERSION",
    "QML_DOCTYPE",
    "RGBA",
    "CategorizedRenderer",
    "Category",
    "GeometryKind",
    "GraduatedRenderer",
    "Range",
    "Renderer",
    "SingleRenderer",
    "Symbol",
    "num",
    "renderer_xml",
    "serialise_xml",
    "symbol_xml",
    "text_element",
]

#: Version stamped on QML and project files: the oldest QGIS whose format we write.
QGIS_XML_VERSION = "3.22.0-Białowieża"
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"

RGBA: TypeAlias = tuple[int, int, int, int]
GeometryKind: TypeAlias = Literal["point", "line", "polygon"]
_SYMBOL_TYPE: dict[GeometryKind, str] = {"point": "marker", "line": "line", "polygon": "fill"}


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


# ----------------------------------------------------------------- QML


def text_element(tag: str, text: str, **attrib: str) -> ET.Element:
    """``<tag attrib...>text</tag>``."""
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


def renderer_xml(r: Renderer) -> ET.Element:
    """``<renderer-v2>`` element of a renderer, its symbols included."""
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
            text_element("symmetricMode", "", enabled="0", symmetrypoint="0", astride="0")
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


def serialise_xml(root: ET.Element, *, doctype: str | None = None) -> str:
    """``root`` as indented XML text, after ``doctype`` when given, ending in a newline."""
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return f"{doctype}\n{body}\n" if doctype else f"{body}\n"
