"""Open terraseg exports in real QGIS and print, as JSON, what QGIS sees.

Run with the system Python that has QGIS (``/usr/bin/python3``), not the
project's virtual environment, and ``QT_QPA_PLATFORM=offscreen``::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py \\
        --gpkg out/city.gpkg --layers buildings,roads --project out/city.qgz

This script only reports; ``tests/test_export.py`` asserts on the report. It
imports nothing from terraseg (QGIS's Python may be another version).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from typing import Any


def _colour(c: Any) -> str:
    """``#rrggbbaa`` of a QColor."""
    return f"{c.name()}{c.alpha():02x}"


def _symbol(symbol: Any) -> dict[str, Any]:
    layer = symbol.symbolLayer(0)
    out: dict[str, Any] = {
        "type": symbol.type(),
        "color": _colour(symbol.color()),
        "layer_class": layer.layerType(),
    }
    if hasattr(layer, "strokeColor"):
        out["stroke"] = _colour(layer.strokeColor())
    if hasattr(layer, "brushStyle"):
        out["filled"] = int(layer.brushStyle()) != 0  # Qt.NoBrush == 0
    if hasattr(layer, "width"):
        out["width"] = layer.width()
    if hasattr(layer, "size"):
        out["size"] = layer.size()
    return out


def _renderer(renderer: Any) -> dict[str, Any]:
    if renderer is None:
        return {"type": None}
    out: dict[str, Any] = {"type": renderer.type()}
    kind = renderer.type()
    if kind == "singleSymbol":
        out["symbol"] = _symbol(renderer.symbol())
    elif kind == "graduatedSymbol":
        out["attr"] = renderer.classAttribute()
        out["method"] = int(renderer.graduatedMethod())
        out["ranges"] = [
            {"lower": r.lowerValue(), "upper": r.upperValue(), "label": r.label(),
             "symbol": _symbol(r.symbol())}
            for r in renderer.ranges()
        ]  # fmt: skip
    elif kind == "categorizedSymbol":
        out["attr"] = renderer.classAttribute()
        out["categories"] = [
            {"value": c.value(), "label": c.label(), "symbol": _symbol(c.symbol())}
            for c in renderer.categories()
        ]
    elif kind == "RuleRenderer":
        out["rules"] = len(renderer.rootRule().children())
    return out


def _raster_renderer(renderer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": renderer.type()}
    if renderer.type() == "paletted":
        out["classes"] = [
            {"value": c.value, "color": _colour(c.color), "label": c.label}
            for c in renderer.classes()
        ]
    elif renderer.type() == "singlebandpseudocolor":
        shader = renderer.shader().rasterShaderFunction()
        out["items"] = len(shader.colorRampItemList())
        out["ramp_type"] = int(shader.colorRampType())
    return out


def _crs(layer: Any) -> str:
    crs = layer.crs()
    return crs.authid() or crs.toWkt()


def _vector(layer: Any) -> dict[str, Any]:
    from qgis.core import QgsWkbTypes

    return {
        "valid": layer.isValid(),
        "crs": _crs(layer) if layer.isSpatial() else None,
        "feature_count": layer.featureCount(),
        "geometry": QgsWkbTypes.displayString(layer.wkbType()),
        "fields": layer.fields().names(),
        "renderer": _renderer(layer.renderer()) if layer.isSpatial() else None,
        "widgets": _widgets(layer),
    }


def _widgets(layer: Any) -> dict[str, Any]:
    """Editor widgets other than the default text edit: ``{field: {type, config, editable}}``."""
    out: dict[str, Any] = {}
    config = layer.editFormConfig()
    for i, name in enumerate(layer.fields().names()):
        setup = layer.editorWidgetSetup(i)
        if setup.type() not in ("", "TextEdit"):
            out[name] = {
                "type": setup.type(),
                "config": setup.config(),
                "editable": not config.readOnly(i),
                "alias": layer.attributeAlias(i),
            }
    out["_read_only"] = [n for i, n in enumerate(layer.fields().names()) if config.readOnly(i)]
    return out


def _sld_check(uri: str, name: str, sld: str | None) -> dict[str, Any]:
    """Load the stored SLD into a fresh layer: does QGIS parse it, and into what?"""
    from qgis.core import QgsVectorLayer

    if not sld:
        return {"ok": False, "error": "no SLD stored"}
    with tempfile.NamedTemporaryFile("w", suffix=".sld", delete=False, encoding="utf-8") as f:
        f.write(sld)
    try:
        layer = QgsVectorLayer(uri, name, "ogr")
        message, ok = layer.loadSldStyle(f.name)
        return {"ok": bool(ok), "error": "" if ok else message,
                "renderer": _renderer(layer.renderer())}  # fmt: skip
    finally:
        os.unlink(f.name)


def check_gpkg(path: str, layers: list[str]) -> dict[str, Any]:
    from qgis.core import QgsVectorLayer

    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT f_table_name, styleName, styleSLD FROM layer_styles WHERE useAsDefault"
        ).fetchall()
    sld = {table: (name, text) for table, name, text in rows}
    report: dict[str, Any] = {}
    for name in layers:
        uri = f"{path}|layername={name}"
        layer = QgsVectorLayer(uri, name, "ogr")  # loads the default style from layer_styles
        info = _vector(layer)
        if layer.isValid():
            count, _ids, names, _descs, error = layer.listStylesInDatabase()
            info["db_styles"] = {"count": count, "names": list(names)[:count], "error": error}
            info["sld"] = _sld_check(uri, name, sld.get(name, (None, None))[1])
        report[name] = info
    runs = QgsVectorLayer(f"{path}|layername=runs", "runs", "ogr")
    report["runs"] = {
        "valid": runs.isValid(),
        "feature_count": runs.featureCount(),
        "fields": runs.fields().names(),
        "spatial": runs.isSpatial(),
    }
    return report


def check_project(path: str) -> dict[str, Any]:
    from qgis.core import QgsProject

    project = QgsProject.instance()
    ok = project.read(path)
    layers = []
    for node in project.layerTreeRoot().findLayers():
        layer = node.layer()
        entry: dict[str, Any] = {"name": node.name(), "visible": node.isVisible()}
        if layer is None:
            entry["valid"] = False
        elif layer.type() == layer.VectorLayer:
            entry.update(_vector(layer), kind="vector", source=layer.source())
        else:
            entry.update(
                kind="raster",
                valid=layer.isValid(),
                crs=_crs(layer),
                source=layer.source(),
                size=[layer.width(), layer.height()],
                renderer=_raster_renderer(layer.renderer()),
            )
        layers.append(entry)
    absolute = project.readBoolEntry("Paths", "/Absolute", True)[0]
    return {
        "read": bool(ok),
        "error": project.error(),
        "crs": project.crs().authid(),
        "paths_absolute": absolute,
        "layers": layers,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpkg")
    parser.add_argument("--layers", default="", help="comma-separated GeoPackage layers")
    parser.add_argument("--project")
    args = parser.parse_args(argv)

    from qgis.core import Qgis, QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        report: dict[str, Any] = {"qgis_version": Qgis.QGIS_VERSION}
        if args.gpkg:
            report["gpkg"] = check_gpkg(args.gpkg, [n for n in args.layers.split(",") if n])
        if args.project:
            report["project"] = check_project(args.project)
    finally:
        app.exitQgis()
    json.dump(report, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
