"""What a user names as a scene, turned into rasters to open: paths, URLs and STAC items.

A command or a workflow names scenes as local paths, URLs (``https://``,
``s3://``) or STAC documents (an item, or an item collection: one scene per
item). :func:`resolve_inputs` turns each into :class:`SceneInput`\\ s, which say
where the pixels are, what to call the outputs and where the scene came from;
:func:`open_input` opens one as a :class:`~terraseg.io.scene.Scene`, using the
STAC georeferencing only where the raster has none.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from affine import Affine

from terraseg.errors import ConfigError
from terraseg.io.georef import SomeCRS, norm_crs
from terraseg.io.remote import source_stem
from terraseg.io.scene import Scene, open_scene
from terraseg.io.stac import (
    DEFAULT_ASSET,
    asset_href,
    is_stac_path,
    pick_asset,
    read_stac_items,
    stac_crs,
    stac_gsd,
    stac_transform,
)

if TYPE_CHECKING:
    import pystac

__all__ = [
    "SceneInput",
    "StacMismatchWarning",
    "open_input",
    "resolve_input",
    "resolve_inputs",
    "safe_stem",
    "scene_input",
    "stac_scene_input",
]


class StacMismatchWarning(UserWarning):
    """A STAC item's georeferencing disagrees with its raster's (the raster's is used)."""


@dataclass(frozen=True, slots=True)
class SceneInput:
    """One scene to process.

    Attributes
    ----------
    href
        Path or URL of the raster.
    name
        Stem of the scene's outputs (``<name>.gpkg``, the scene's folder in a run).
    stac_item, stac_asset, stac_source
        The STAC item id, the chosen asset key and the STAC document it was read
        from; ``None`` for a scene named by its path.
    crs, transform
        The item's ``proj:`` CRS (text) and geotransform, used only when the
        raster has none.
    gsd_m
        The item's nominal ``gsd``, if given.
    """

    href: str
    name: str
    stac_item: str | None = None
    stac_asset: str | None = None
    stac_source: str | None = None
    crs: str | None = None
    transform: Affine | None = None
    gsd_m: float | None = None

    def run_info(self) -> dict[str, Any]:
        """Where the scene came from, for ``run.json`` and the GeoPackage ``runs`` table."""
        if self.stac_item is None:
            return {}
        return {"stac_item": self.stac_item, "stac_asset": self.stac_asset,
                "stac_source": self.stac_source}


def safe_stem(text: str) -> str:
    """``text`` as a file stem: awkward characters become ``_``; never empty or hidden.

    Examples
    --------
    >>> safe_stem("S2A_33UUP_20240101:v1"), safe_stem("..")
    ('S2A_33UUP_20240101_v1', 'scene')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "scene"


def stac_scene_input(item: pystac.Item, *, asset: str = DEFAULT_ASSET,
                     source: str | None = None) -> SceneInput:
    """The scene input of one STAC item: its chosen asset, name (the item id), CRS, transform.

    Raises
    ------
    ConfigError
        The item has no asset with key or role ``asset``.
    """
    key, chosen = pick_asset(item, asset)
    return SceneInput(
        href=asset_href(item, chosen),
        name=safe_stem(item.id),
        stac_item=item.id,
        stac_asset=key,
        stac_source=source,
        crs=stac_crs(item, chosen),
        transform=stac_transform(item, chosen),
        gsd_m=stac_gsd(item, chosen),
    )


def resolve_input(path: str | os.PathLike[str], *, asset: str = DEFAULT_ASSET) -> list[SceneInput]:
    """The scene(s) ``path`` names: itself, or one per item of a STAC document.

    Raises
    ------
    SceneReadError
        A STAC document cannot be read or is not an item / item collection.
    ConfigError
        A STAC item has no asset ``asset``.
    """
    text = os.fspath(path)
    if not is_stac_path(text):
        return [SceneInput(href=text, name=source_stem(text))]
    return [stac_scene_input(item, asset=asset, source=text) for item in read_stac_items(text)]


def scene_input(scene: str | os.PathLike[str], *, asset: str = DEFAULT_ASSET) -> SceneInput:
    """The one scene ``scene`` names: a path, an ``http(s)://`` / ``s3://`` URL, or a STAC item.

    ``asset`` is the STAC asset key or role to read (``"visual"`` by default).

    Raises
    ------
    ConfigError
        A STAC item without that asset, or an item collection of several items
        (those run as a workflow).
    SceneReadError
        An unreadable STAC document.
    """
    found = resolve_input(scene, asset=asset)
    if len(found) != 1:
        raise ConfigError(
            f"'{os.fspath(scene)}' holds {len(found)} STAC items and predict takes one scene; "
            "pass one item's JSON, or list the collection in a workflow's inputs.paths and "
            "run it with `terraseg run`",
            path=os.fspath(scene),
        )
    return found[0]


def resolve_inputs(
    paths: list[str], *, asset: str = DEFAULT_ASSET
) -> list[SceneInput]:
    """Every scene ``paths`` name, in order (see :func:`resolve_input`)."""
    return [inp for p in paths for inp in resolve_input(p, asset=asset)]


def open_input(inp: SceneInput, *, assume_crs: SomeCRS | None = None) -> Scene:
    """Open ``inp``'s raster; its STAC CRS/transform fill in what the raster lacks.

    An explicit ``assume_crs`` wins over the item's CRS. Where the raster has
    its own georeferencing and the item disagrees, a
    :class:`StacMismatchWarning` says so and the raster's is used.
    """
    crs = assume_crs if assume_crs is not None else inp.crs
    scene = open_scene(inp.href, assume_crs=crs, assume_transform=inp.transform)
    if inp.stac_item is not None:
        _check_stac_georef(inp, scene)
    return scene


def _check_stac_georef(inp: SceneInput, scene: Scene) -> None:
    problems = []
    if inp.crs is not None and not scene.crs_assumed and norm_crs(inp.crs) != scene.crs:
        problems.append(f"CRS {inp.crs} (the raster: {scene.crs.to_string()})")
    if inp.transform is not None and not scene.transform.almost_equals(inp.transform, 1e-6):
        problems.append(f"proj:transform {tuple(inp.transform)[:6]} "
                        f"(the raster: {tuple(scene.transform)[:6]})")
    if problems:
        warnings.warn(
            f"STAC item '{inp.stac_item}' says {' and '.join(problems)}; using the raster's "
            "own georeferencing", StacMismatchWarning, stacklevel=3,
        )
