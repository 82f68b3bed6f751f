"""QGIS attribute forms written without QGIS: a field's editor widget, alias and default.

A :class:`LayerForm` says how QGIS edits a layer's attributes: a **Value Map**
(a drop-down of named values) on one field, the other fields read-only. It is
serialised to the ``<fieldConfiguration>``, ``<aliases>``, ``<defaults>``,
``<editable>`` and ``<editorlayout>`` elements QGIS 3.22 itself writes into a
QML document or a project's ``<maplayer>``, so the same description serves the
GeoPackage ``layer_styles`` row and the ``.qgz``
(:meth:`terraseg.export.qgis_styles.VectorStyle.qml_elements`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["VALUE_MAP_NULL", "LayerForm", "form_xml"]

#: How a QGIS Value Map stores "set this attribute to NULL"
#: (``QgsValueMapFieldFormatter::NULL_VALUE``).
VALUE_MAP_NULL = "{2839923C-8B7D-419E-B84B-CA2FE9B80EC7}"


@dataclass(frozen=True, slots=True)
class LayerForm:
    """The attribute form of a layer: one Value Map field, the others read-only.

    Attributes
    ----------
    field
        The edited field, e.g. ``"class"``.
    value_map
        ``(label, value)`` pairs of the drop-down, in order; ``value=None`` is
        NULL (:data:`VALUE_MAP_NULL`).
    fields
        Every attribute field of the layer, in table order (their aliases and
        read-only flags are written).
    alias
        Label of ``field`` in the form.
    read_only
        Fields the form shows but does not let the user edit.
    """

    field: str
    value_map: tuple[tuple[str, int | str | None], ...]
    fields: tuple[str, ...]
    alias: str = ""
    read_only: tuple[str, ...] = ()


def _value(value: int | str | None) -> str:
    return VALUE_MAP_NULL if value is None else str(value)


def form_xml(form: LayerForm) -> list[ET.Element]:
    """The QML elements of ``form`` (children of ``<qgis>`` or ``<maplayer>``).

    Examples
    --------
    >>> f = LayerForm("class", (("building", 1),), ("segment_id", "class"))
    >>> [e.tag for e in form_xml(f)][:3]
    ['fieldConfiguration', 'aliases', 'defaults']
    >>> el = form_xml(f)[0].find("field[@name='class']/editWidget")
    >>> el.get("type"), el.find(".//Option[@name='building']").get("value")
    ('ValueMap', '1')
    """
    config = ET.Element("fieldConfiguration")
    for name in form.fields:
        field = ET.SubElement(config, "field", name=name, configurationFlags="None")
        if name == form.field:
            widget = ET.SubElement(field, "editWidget", type="ValueMap")
            top = ET.SubElement(ET.SubElement(widget, "config"), "Option", type="Map")
            entries = ET.SubElement(top, "Option", type="List", name="map")
            for label, value in form.value_map:
                entry = ET.SubElement(entries, "Option", type="Map")
                ET.SubElement(entry, "Option", type="QString", name=label, value=_value(value))
        else:
            widget = ET.SubElement(field, "editWidget", type="TextEdit")
            top = ET.SubElement(ET.SubElement(widget, "config"), "Option", type="Map")
            ET.SubElement(top, "Option", type="bool", name="IsMultiline", value="false")
            ET.SubElement(top, "Option", type="bool", name="UseHtml", value="false")
    aliases = ET.Element("aliases")
    defaults = ET.Element("defaults")
    editable = ET.Element("editable")
    label_on_top = ET.Element("labelOnTop")
    for index, name in enumerate(form.fields):
        alias = form.alias if name == form.field else ""
        ET.SubElement(aliases, "alias", field=name, index=str(index), name=alias)
        ET.SubElement(defaults, "default", field=name, expression="", applyOnUpdate="0")
        ET.SubElement(editable, "field", name=name,
                      editable="0" if name in form.read_only else "1")  # fmt: skip
        ET.SubElement(label_on_top, "field", name=name, labelOnTop="0")
    layout = ET.Element("editorlayout")
    layout.text = "generatedlayout"
    suppress = ET.Element("featformsuppress")
    suppress.text = "0"
    return [config, aliases, defaults, ET.Element("editform", tolerant="1"), suppress, layout,
            editable, label_on_top]  # fmt: skip
