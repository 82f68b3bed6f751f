"""CLI command ``terraseg extract``: the polygon of the object at a point of a scene.

Registered on the main app in :mod:`terraseg.cli.main`. Thin: parse the point,
place it in the scene (a bad point or CRS fails before torch is imported), call
:func:`terraseg.api.extract`, write the one-row GeoPackage atomically (a
temporary name, then a rename), print what was written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from terraseg.errors import ConfigError

__all__ = ["extract_command", "parse_point"]


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` → ``(x, y)``; one line naming the problem and the fix when it is not that.

    Examples
    --------
    >>> parse_point("486750.5, 4090350")
    (486750.5, 4090350.0)
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(
            f"--point {text!r} is not X,Y; give two numbers separated by a comma, e.g. "
            "--point 486750.5,4090350 (scene CRS) or --point 15.2,41.9 --crs EPSG:4326",
            point=text,
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ConfigError(
            f"--point {text!r} is not finite; give two finite numbers X,Y", point=text
        )
    return x, y


def extract_command(
    scene: Annotated[
        str, typer.Argument(help="Input GeoTIFF/COG: a path or an http(s):// or s3:// URL.")
    ],
    point: Annotated[
        str,
        typer.Option(
            "--point",
            help="X,Y of the object, in the scene CRS or in --crs (lon,lat for EPSG:4326).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output GeoPackage (one row), e.g. obj.gpkg.")],
    crs: Annotated[
        str | None,
        typer.Option("--crs", help="CRS of --point, e.g. EPSG:4326 (default: the scene's)."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Instance model (bundled name or checkpoint), or "
            "'none' for a colour region without a model.",
        ),
    ] = "demo-instance",
    window_px: Annotated[
        int,
        typer.Option(
            "--window-px",
            help="First window side around the point, pixels "
            "(doubles while the building reaches its edge).",
        ),
    ] = 256,
    max_window_px: Annotated[
        int, typer.Option("--max-window-px", help="Largest window side, pixels.")
    ] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Extract the object at a point: a building from the instance model, else a colour region."""
    if out.suffix.lower() != ".gpkg":
        raise ConfigError(
            f"--out '{out}' must end in .gpkg; e.g. --out {out.with_suffix('.gpkg')}", path=out
        )
    xy = parse_point(point)
    if out.exists() and not overwrite:
        from terraseg.errors import OutputExistsError

        raise OutputExistsError(
            f"output '{out}' already exists; pass --overwrite to replace it", path=out
        )
    from terraseg.engine.extract import locate_point
    from terraseg.io.inputs import open_input, scene_input

    sc = open_input(scene_input(scene))
    locate_point(sc, xy, crs)  # a point outside the scene fails here, before torch loads

    from terraseg.api import extract
    from terraseg.io.atomic import atomic_output

    gdf = extract(
        sc,
        point=xy,
        crs=crs,
        model=None if model.lower() == "none" else model,
        window_px=window_px,
        max_window_px=max_window_px,
        device=device,
    )
    with atomic_output(out, overwrite=overwrite) as tmp:
        gdf.to_file(tmp, layer="object", driver="GPKG")
    row = gdf.iloc[0]
    what = f"building ({row['model']})" if row["method"] == "instance" else "colour region"
    typer.echo(
        f"wrote {out}: {what}, {row['area_m2']:.1f} m², at ({row['x']:.6g}, "
        f"{row['y']:.6g}) in {gdf.crs.to_string()}"
    )
