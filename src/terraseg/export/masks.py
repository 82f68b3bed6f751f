"""Masks in an export folder: checked, then copied, hard-linked or rewritten as COGs.

A mask that is a valid Cloud-Optimized GeoTIFF
(:func:`~terraseg.io.raster_sink.validate_cog`), as the engine writes them, is
copied or hard-linked. Any other raster GDAL reads (a striped or untiled
GeoTIFF from another tool, a VRT...) is rewritten as a COG named ``<stem>.tif``,
streamed block by block (:func:`~terraseg.io.masks.copy_as_cog`). A GDAL
``.aux.xml`` sidecar (category names) travels with its mask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import rasterio

from terraseg.errors import ConfigError, ExportError
from terraseg.export.layers import _check_name
from terraseg.export.output_files import _atomic, _refuse_existing, _remove_all
from terraseg.export.qgis_project import RasterInfo, inspect_raster
from terraseg.io.masks import copy_as_cog
from terraseg.io.raster_sink import validate_cog

__all__ = ["export_masks"]


def _inspect_masks(masks: Mapping[str, str | os.PathLike[str]]) -> dict[str, RasterInfo]:
    """Check every mask exists and is a readable raster; read what the project needs."""
    infos: dict[str, RasterInfo] = {}
    for name, value in masks.items():
        _check_name(name, what="mask")
        path = Path(value)
        if not path.is_file():
            raise ExportError(
                f"mask '{name}' file '{path}' does not exist; pass the COGs the run wrote",
                path=path,
            )
        try:
            infos[name] = inspect_raster(path)
        except (rasterio.errors.RasterioError, ValueError) as exc:
            raise ExportError(f"cannot read mask '{name}' file '{path}': {exc}", path=path) from exc
    return infos


def _mask_targets(masks: Mapping[str, str | os.PathLike[str]], out_dir: Path) -> dict[str, Path]:
    """Where each mask goes: its own file name in ``out_dir`` (unchanged when already there)."""
    targets: dict[str, Path] = {}
    for name, value in masks.items():
        source = Path(value)
        # a raster that is not a GeoTIFF is rewritten as a COG (see _copy_file)
        tiff = source.suffix.lower() in (".tif", ".tiff")
        target = out_dir / (source.name if tiff else f"{source.stem}.tif")
        clash = [other for other, path in targets.items() if path == target]
        if clash:
            raise ConfigError(
                f"masks '{clash[0]}' and '{name}' are both named '{source.name}'; rename one",
                name=name,
            )
        targets[name] = target
    return targets


def _already_there(source: Path, target: Path) -> bool:
    return target.exists() and source.resolve() == target.resolve()


def _is_sidecar(path: Path) -> bool:
    return path.name.lower().endswith(".aux.xml")


def _copy_file(source: Path, tmp: Path, link: bool) -> None:
    """Copy (or hard-link) ``source`` to ``tmp``; a mask that is not a COG is rewritten as one."""
    if not _is_sidecar(source) and validate_cog(source):
        copy_as_cog(source, tmp)
        return
    if link:
        try:
            os.link(source, tmp)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(source, tmp)


def export_masks(
    masks: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    link: bool = False,
) -> dict[str, Path]:
    """Check masks and copy (or hard-link) them into ``out_dir`` as COGs.

    Parameters
    ----------
    masks
        ``{layer name: raster path}``, e.g. ``{"classes": run/"classes.tif"}``.
        A valid COG is copied as it is; any other raster GDAL reads is
        rewritten as a COG named ``<stem>.tif``, streamed block by block. A GDAL
        ``.aux.xml`` sidecar (category names) travels with its raster.
    out_dir
        Destination folder; a mask already in it is only checked (and kept as it is).
    overwrite
        Replace existing files of the same names.
    link
        Hard-link instead of copying where the file system allows it.

    Returns
    -------
    dict
        ``{layer name: path in out_dir}``.

    Raises
    ------
    ExportError
        A mask is missing or not a readable raster.
    """
    _inspect_masks(masks)
    targets = _mask_targets(masks, Path(out_dir))
    jobs, stale = _mask_jobs(masks, targets)
    _refuse_existing([target for _, target in jobs], overwrite)
    with contextlib.ExitStack() as stack:
        for source, target in jobs:
            _copy_file(source, stack.enter_context(_atomic(target, overwrite=overwrite)), link)
    _remove_all(stale)
    return targets


def _mask_jobs(
    masks: Mapping[str, str | os.PathLike[str]], targets: Mapping[str, Path]
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(source, target)`` copies to make, ``.aux.xml`` sidecars included, and the
    sidecars of replaced masks that no longer describe them (to remove after the copy)."""
    jobs: list[tuple[Path, Path]] = []
    stale: list[Path] = []
    for name, value in masks.items():
        source, target = Path(value), targets[name]
        if _already_there(source, target):
            continue
        jobs.append((source, target))
        aux, target_aux = (p.with_name(p.name + ".aux.xml") for p in (source, target))
        if aux.is_file():
            jobs.append((aux, target_aux))
        elif target_aux.exists():
            stale.append(target_aux)
    return jobs, stale
