"""The vector layers to export: names, CRSs, geometry types and default styles.

:func:`prepare_layers` checks what :mod:`terraseg.export.writers` is asked to
write (table names, GeoDataFrames with a CRS, one CRS for all) and reprojects
on request; :func:`default_styles` gives each layer its QGIS style.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

import geopandas as gpd
import numpy as np
import pyproj
import shapely

from terraseg.errors import ConfigError, CRSError, CRSMismatchError, ExportError
from terraseg.export.qgis_project import same_crs
from terraseg.export.qgis_renderers import GeometryKind
from terraseg.export.qgis_styles import VectorStyle, default_vector_style, geometry_kind

__all__ = ["InvalidGeometryWarning", "SomeCRS", "default_styles", "prepare_layers"]

SomeCRS: TypeAlias = str | int | pyproj.CRS
_RESERVED = {"runs", "layer_styles", "sqlite_sequence"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class InvalidGeometryWarning(UserWarning):
    """Some exported geometries are invalid (written unchanged; the count is in the message)."""


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
