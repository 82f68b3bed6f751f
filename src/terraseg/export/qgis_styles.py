"""QGIS vector styles written without QGIS: QML (QGIS style XML) and SLD, and the
GeoPackage ``layer_styles`` table QGIS loads default styles from.

A style is described by small frozen dataclasses (:class:`Symbol`, a renderer,
:class:`VectorStyle`) and serialised to the XML QGIS 3.22 itself writes, so the
same description gives

* the ``styleQML``/``styleSLD`` of a GeoPackage ``layer_styles`` row, and
* the renderer inside a ``<maplayer>`` of a QGIS project.

This module holds :class:`VectorStyle`, the styles terraseg gives its layers
(:func:`default_vector_style`) and the ``layer_styles`` table; symbols,
renderers and their QML live in :mod:`terraseg.export.qgis_renderers`, the SLD
encoding in :mod:`terraseg.export.sld` (both re-exported here).
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
from typing import TypeAlias

import numpy as np
import pandas as pd

from terraseg.errors import ExportError
from terraseg.export.qgis_forms import LayerForm, form_xml
from terraseg.export.qgis_renderers import (
    QGIS_XML_VERSION,
    QML_DOCTYPE,
    RGBA,
    CategorizedRenderer,
    Category,
    GeometryKind,
    GraduatedRenderer,
    Range,
    Renderer,
    SingleRenderer,
    Symbol,
    num,
    renderer_xml,
    serialise_xml,
    symbol_xml,
    text_element,
)
from terraseg.export.sld import hex_rgb, sld_document
from terraseg.models.spec import DEFAULT_CLASSES

__all__ = [
    "QGIS_XML_VERSION",
    "QML_DOCTYPE",
    "RGBA",
    "Category",
    "CategorizedRenderer",
    "GeometryKind",
    "GraduatedRenderer",
    "Range",
    "Renderer",
    "SQLiteValue",
    "SingleRenderer",
    "Symbol",
    "VectorStyle",
    "default_vector_style",
    "hex_rgb",
    "num",
    "read_layer_styles",
    "symbol_xml",
    "write_layer_styles",
]

#: A value SQLite returns: TEXT, INTEGER, REAL, BLOB or NULL.
SQLiteValue: TypeAlias = str | int | float | bytes | None
#: QgsWkbTypes::GeometryType as QML ``layerGeometryType``.
GEOMETRY_TYPE_CODE: dict[GeometryKind, int] = {"point": 0, "line": 1, "polygon": 2}

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
    form
        The attribute form (a Value Map field, read-only fields), or ``None``
        for QGIS's generated one.
    """

    layer: str
    geometry: GeometryKind
    renderer: Renderer
    title: str
    description: str = ""
    form: LayerForm | None = None

    @property
    def renderer_type(self) -> str:
        """QGIS renderer type name, e.g. ``"graduatedSymbol"``."""
        return self.renderer.type

    def qml_elements(self) -> list[ET.Element]:
        """The children of ``<qgis>`` (QML) or ``<maplayer>`` (project) for this style."""
        return [
            renderer_xml(self.renderer),
            text_element("blendMode", "0"),
            text_element("featureBlendMode", "0"),
            text_element("layerOpacity", "1"),
            *(form_xml(self.form) if self.form is not None else []),
            text_element("layerGeometryType", str(GEOMETRY_TYPE_CODE[self.geometry])),
        ]

    def to_qml(self) -> str:
        """The style as a QGIS ``.qml`` document (QGIS 3.22 format)."""
        categories = "Symbology" if self.form is None else "Symbology|Fields|Forms"
        root = ET.Element(
            "qgis", version=QGIS_XML_VERSION, styleCategories=categories, labelsEnabled="0"
        )
        root.extend(self.qml_elements())
        return serialise_xml(root, doctype=QML_DOCTYPE)

    def to_sld(self) -> str:
        """The style as an OGC SLD 1.1 document (Symbology Encoding rules)."""
        return sld_document(self.layer, self.renderer)


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


def read_layer_styles(gpkg: str | os.PathLike[str]) -> list[dict[str, SQLiteValue]]:
    """The rows of ``gpkg``'s ``layer_styles`` table (``[]`` when there is none)."""
    with _sqlite(Path(gpkg)) as conn:
        conn.row_factory = sqlite3.Row
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'layer_styles'").fetchone():
            return []
        return [dict(row) for row in conn.execute("SELECT * FROM layer_styles ORDER BY id")]
