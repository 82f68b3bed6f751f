"""Evaluation inputs: rasters or vector layers, which layer serves which task, reading and repair.

:func:`terraseg.evaluate.scores.evaluate` takes two files. This module tells a
class raster from a vector file, lists a vector file's layers and picks the one
for each task (``buildings`` / ``road_centerlines`` by name, else the only
polygon / line layer, else the geometry types of the first features), reads a
layer (GeoPackage, GeoJSON, FlatGeobuf through pyogrio; GeoParquet through
geopandas), and repairs its geometries (``make_valid``; polygons for buildings,
LineStrings for roads), each repair or drop reported as an :class:`EvaluationWarning`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, TypeAlias

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.errors import ConfigError, SceneReadError

__all__ = ["RASTER_SUFFIXES", "EvaluationWarning", "Task"]

Geoms: TypeAlias = "NDArray[np.object_]"
Task: TypeAlias = Literal["auto", "buildings", "roads", "pixels"]
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2"})
_LAYER_NAMES = {"buildings": ("buildings",), "roads": ("road_centerlines", "centerlines")}


class EvaluationWarning(UserWarning):
    """Something in the inputs that the scores should be read with (repairs, empties)."""


def _is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def _check_exists(path: Path, role: str) -> None:
    if not path.exists():
        raise SceneReadError(
            f"cannot read {role} '{path}': file not found; check the path", path=str(path)
        )


def _list_layers(path: Path, role: str) -> list[tuple[str, str]]:
    """``[(layer, geometry type)]`` of a vector file (one unnamed layer for Parquet)."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return [(path.stem, "Unknown")]
    import pyogrio

    try:
        return [(str(n), str(t)) for n, t in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError (a RuntimeError) and others
        raise SceneReadError(
            f"cannot read {role} '{path}' as a vector file ({exc}); pass a GeoPackage, "
            "GeoJSON, FlatGeobuf or GeoParquet file, or a GeoTIFF class raster",
            path=str(path),
        ) from exc


def _kind(geometry_type: str) -> str | None:
    t = geometry_type.lower()
    if "polygon" in t:
        return "buildings"
    if "line" in t:
        return "roads"
    return None


def _pick_layers(
    path: Path, role: str, layers: list[tuple[str, str]], task: Task, layer: str | None
) -> dict[str, str]:
    """``{task: layer}`` for the tasks this file can serve (``task`` or, for auto, both)."""
    names = [n for n, _ in layers]
    listing = ", ".join(f"{n} ({t})" for n, t in layers) or "none"
    if layer is not None:
        if layer not in names:
            raise ConfigError(
                f"{role} '{path}' has no layer '{layer}'; its layers: {listing}",
                path=str(path),
                layer=layer,
                layers=names,
            )
        if task != "auto":
            return {task: layer}
        kind = _kind(dict(layers)[layer]) or _sniff(path, layer)
        return {kind: layer} if kind else {}
    wanted = ["buildings", "roads"] if task == "auto" else [task]
    out: dict[str, str] = {}
    for t in wanted:
        by_name = [n for n in _LAYER_NAMES[t] if n in names]
        by_type = [n for n, g in layers if _kind(g) == t]
        if by_name:
            out[t] = by_name[0]
        elif len(layers) == 1 and (task != "auto" or _kind(layers[0][1]) in (t, None)):
            kind = _kind(layers[0][1]) or (t if task != "auto" else _sniff(path, names[0]))
            if kind == t:
                out[t] = names[0]
        elif len(by_type) == 1:
            out[t] = by_type[0]
    return out


def _sniff(path: Path, layer: str) -> str | None:
    """``"buildings"`` or ``"roads"`` from the geometry types of a layer's first features."""
    gdf = _read_layer(path, layer, max_features=100)
    types = set(gdf.geometry.dropna().geom_type)
    if types and all("Polygon" in t for t in types):
        return "buildings"
    if types and all("LineString" in t for t in types):
        return "roads"
    return None


def _read_layer(path: Path, layer: str, max_features: int | None = None) -> gpd.GeoDataFrame:
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        try:
            gdf = gpd.read_parquet(path)
        except Exception as exc:
            raise SceneReadError(
                f"cannot read GeoParquet '{path}' ({exc}); check the file", path=str(path)
            ) from exc
        return gdf if max_features is None else gdf.iloc[:max_features]
    import pyogrio

    try:
        return pyogrio.read_dataframe(path, layer=layer, max_features=max_features)
    except Exception as exc:
        raise SceneReadError(
            f"cannot read layer '{layer}' of '{path}' ({exc}); check the file",
            path=str(path),
            layer=layer,
        ) from exc


def _repair(gdf: gpd.GeoDataFrame, kind: str, what: str) -> Geoms:
    """Valid polygons (buildings) or LineStrings (roads) of a layer; repairs and drops warned.

    A building keeps the polygonal parts of its (repaired) geometry, one feature
    one building; roads are exploded into LineStrings.
    """
    geoms = np.asarray(gdf.geometry.array, object)
    missing = shapely.is_missing(geoms) if len(geoms) else np.zeros(0, bool)
    if missing.any():
        _warn(f"{what}: ignored {int(missing.sum())} features without geometry")
    geoms = geoms[~missing]
    invalid = ~shapely.is_valid(geoms) if len(geoms) else np.zeros(0, bool)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        _warn(f"{what}: repaired {int(invalid.sum())} invalid geometries with make_valid")
    if kind == "buildings":
        ids = [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]
    else:
        ids = [shapely.GeometryType.LINESTRING]
    if len(geoms):
        geoms = geoms[~shapely.is_empty(geoms)]
        other = ~np.isin(shapely.get_type_id(geoms), ids)
        if kind == "roads" or other.any():
            parts, index = shapely.get_parts(
                geoms[other] if kind == "buildings" else geoms, return_index=True
            )
            ok = np.isin(shapely.get_type_id(parts), ids) & ~shapely.is_empty(parts)
            if kind == "roads":
                n_other = len(geoms) - len(np.unique(index[ok]))
                geoms = parts[ok]
            else:  # the polygonal parts of collections left by make_valid
                kept = [shapely.union_all(parts[ok & (index == i)]) for i in np.unique(index[ok])]
                n_other = int(other.sum()) - len(kept)
                geoms = np.concatenate([geoms[~other], np.asarray(kept, object)])
            want = "polygons" if kind == "buildings" else "lines"
            if n_other and not len(geoms):
                raise ConfigError(
                    f"{what} holds no {want}, but {kind} are scored on {want}; pass the "
                    f"layer with the {kind} (--pred-layer/--truth-layer) or another --task",
                    task=kind,
                )
            if n_other:
                _warn(f"{what}: ignored {n_other} features that are not {want}")
    return np.asarray(geoms, object)


def _warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)
