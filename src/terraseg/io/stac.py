"""Scenes described by STAC items: pick the raster asset, read its georeferencing.

Most imagery archives (Maxar Open Data, NAIP, Sentinel, OpenAerialMap...)
publish a STAC item per scene: a GeoJSON Feature whose ``assets`` point at
the rasters. :func:`read_stac_items` reads an item or an item collection
(``FeatureCollection``) from a file or URL with pystac, :func:`pick_asset`
picks an asset by key or role (``"visual"`` by default), and :func:`stac_crs`
and :func:`stac_transform` read the CRS (``proj:code`` / ``proj:epsg`` /
``proj:wkt2``) and the geotransform (``proj:transform``) of the projection
extension, asset fields over item fields. :mod:`terraseg.io.inputs` uses those
only where the raster itself has no georeferencing, and reports a
disagreement with the raster.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from affine import Affine

from terraseg.errors import ConfigError, SceneReadError
from terraseg.io.remote import is_remote

if TYPE_CHECKING:
    import pystac

__all__ = [
    "DEFAULT_ASSET",
    "asset_href",
    "is_stac_path",
    "pick_asset",
    "read_stac_items",
    "stac_crs",
    "stac_gsd",
    "stac_transform",
]

DEFAULT_ASSET = "visual"
"""The asset key or role a STAC item's raster is taken from unless told otherwise."""

_SUFFIXES = (".json", ".geojson")


def is_stac_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a JSON document (a STAC item or item collection).

    Examples
    --------
    >>> is_stac_path("https://h/items/a.json?token=1"), is_stac_path("scene.tif")
    (True, False)
    """
    text = os.fspath(path)
    if "://" in text:
        text = urllib.parse.urlsplit(text).path
    return text.lower().endswith(_SUFFIXES)


def _read_text(href: str) -> str:
    """The document at ``href``: a local file, or an http(s) URL through pystac's reader."""
    if not is_remote(href):
        with open(href, encoding="utf-8") as fh:
            return fh.read()
    import pystac

    return str(pystac.StacIO.default().read_text(href))


def read_stac_items(href: str | os.PathLike[str]) -> list[pystac.Item]:
    """The STAC items in a STAC item or item collection file or URL.

    Raises
    ------
    SceneReadError
        The document cannot be read, is not JSON, or is not a STAC item or
        item collection (a Collection or Catalog is refused with a hint).
    """
    import pystac

    text_href = os.fspath(href)
    try:
        data = json.loads(_read_text(text_href))
    except (OSError, ValueError) as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
        raise SceneReadError(
            f"cannot read STAC document '{text_href}': {reason}; check the path or URL",
            path=text_href,
        ) from exc
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(data, href=_absolute(text_href))]
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data).items)
            for item in items:
                if item.get_self_href() is None:
                    item.set_self_href(_absolute(text_href))  # relative assets: next to the file
            return items
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise SceneReadError(
            f"'{text_href}' is not a valid STAC item: {exc}; check the document",
            path=text_href,
        ) from exc
    hint = (" (a STAC Collection or Catalog: list the items you want in an item collection, "
            "or pass an item's JSON)") if kind in ("Collection", "Catalog") else ""
    raise SceneReadError(
        f"'{text_href}' is not a STAC item or item collection (type {kind!r}){hint}; "
        "pass a STAC item JSON",
        path=text_href,
    )


def _absolute(href: str) -> str:
    return href if is_remote(href) else os.path.abspath(href)


def pick_asset(item: pystac.Item, asset: str) -> tuple[str, pystac.Asset]:
    """The asset ``asset`` names by key, else the first one with that role (GeoTIFFs first)."""
    if asset in item.assets:
        return asset, item.assets[asset]
    by_role = [(k, a) for k, a in item.assets.items() if asset in (a.roles or [])]
    by_role.sort(key=lambda ka: "tiff" not in (ka[1].media_type or ""))
    if by_role:
        return by_role[0]
    choices = ", ".join(
        f"{k} ({'/'.join(a.roles)})" if a.roles else k for k, a in item.assets.items()
    ) or "none"
    raise ConfigError(
        f"STAC item '{item.id}' has no asset '{asset}' (by key or role); pass --asset (or "
        f"inputs.asset) with one of its assets: {choices}",
        item=item.id,
        asset=asset,
    )


def _field(item: pystac.Item, asset: pystac.Asset, key: str) -> Any:
    """A field of the asset, else of the item's properties (STAC's inheritance rule)."""
    if key in asset.extra_fields:
        return asset.extra_fields[key]
    return item.properties.get(key)


def stac_crs(item: pystac.Item, asset: pystac.Asset) -> str | None:
    """The projection extension's CRS as ``"EPSG:n"``, a code, or WKT2; ``None`` if absent."""
    code = _field(item, asset, "proj:code")
    if code:
        return str(code)
    epsg = _field(item, asset, "proj:epsg")
    if epsg is not None:
        return f"EPSG:{int(epsg)}"
    wkt = _field(item, asset, "proj:wkt2")
    if wkt:
        return str(wkt)
    projjson = _field(item, asset, "proj:projjson")
    return json.dumps(projjson) if projjson else None


def stac_transform(item: pystac.Item, asset: pystac.Asset) -> Affine | None:
    """``proj:transform`` (6 or 9 numbers, GDAL's ``a b c d e f`` order) as an Affine."""
    values = _field(item, asset, "proj:transform")
    if not values or len(values) not in (6, 9):
        return None
    return Affine(*(float(v) for v in values[:6]))


def asset_href(item: pystac.Item, asset: pystac.Asset) -> str:
    """The asset's absolute path or URL (a relative href is taken next to the item)."""
    href = asset.get_absolute_href() or asset.href
    if "://" not in href and not os.path.isabs(href) and item.get_self_href():
        base = item.get_self_href() or ""
        href = (urllib.parse.urljoin(base, href) if is_remote(base)
                else os.path.join(os.path.dirname(base), href))
    return href


def stac_gsd(item: pystac.Item, asset: pystac.Asset) -> float | None:
    """The nominal ground sample distance (STAC common metadata ``gsd``), if given."""
    value = _field(item, asset, "gsd")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
