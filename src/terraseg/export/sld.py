"""OGC SLD 1.1 (Symbology Encoding) documents of QGIS renderers.

The ``styleSLD`` of a GeoPackage ``layer_styles`` row: one rule per symbol
of the renderer, with the filter QGIS writes for graduated ranges and
categories. Sizes in millimetres become SLD pixels of 0.28 mm.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from terraseg.export.qgis_renderers import (
    GraduatedRenderer,
    Renderer,
    SingleRenderer,
    Symbol,
    num,
    serialise_xml,
)

__all__ = ["hex_rgb", "sld_document"]

_MM_TO_PX = 1 / 0.28  # SLD pixels are 0.28 mm (OGC standardized rendering pixel)
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


def sld_document(layer_name: str, renderer: Renderer) -> str:
    """The SLD document styling layer ``layer_name`` with ``renderer``."""
    root = ET.Element("StyledLayerDescriptor", _SLD_NS)
    layer = ET.SubElement(root, "NamedLayer")
    ET.SubElement(layer, "se:Name").text = layer_name
    user = ET.SubElement(layer, "UserStyle")
    ET.SubElement(user, "se:Name").text = layer_name
    fts = ET.SubElement(user, "se:FeatureTypeStyle")
    fts.extend(_sld_rules(renderer))
    return serialise_xml(root, doctype='<?xml version="1.0" encoding="UTF-8"?>')
