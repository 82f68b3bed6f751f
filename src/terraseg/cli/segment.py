"""CLI command ``terraseg segment``: model-free segmentation of a scene.

Registered on the main app in :mod:`terraseg.cli.main`. Thin: parse options, call
:func:`terraseg.engine.segment.segment_scene`, print what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from terraseg.errors import ConfigError

__all__ = ["segment_command"]


def segment_command(
    scene: Annotated[str, typer.Argument(help="Input GeoTIFF/COG: a path or an http(s):// or s3:// URL.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    method: Annotated[
        str, typer.Option("--method", help="threshold, index, kmeans, slic, watershed, felzenszwalb or canny.")
    ] = "slic",
    expr: Annotated[
        str | None,
        typer.Option("--expr", help='threshold: a condition over bands, e.g. "b1 > 120" or '
                     '"ndvi > 0.3 and b4 > 50"; without it, --band above --threshold.'),
    ] = None,
    band: Annotated[int, typer.Option("--band", help="threshold: the 1-based band compared.")] = 1,
    index: Annotated[
        str | None, typer.Option("--index", help="index: ndvi, ndwi (R,G,B,NIR) or exg (RGB).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="threshold/index: class 1 above it (default: Otsu on a "
                     "scene sample)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="kmeans: number of clusters (2..254).")] = 5,
    segment_size_m2: Annotated[
        float, typer.Option("--segment-size-m2", help="slic/watershed: target mean segment area, m².")
    ] = 50.0,
    compactness: Annotated[
        float | None,
        typer.Option("--compactness", help="slic/watershed: higher gives squarer segments "
                     "(default: slic 10, watershed 0.002)."),
    ] = None,
    scale: Annotated[
        float, typer.Option("--scale", help="felzenszwalb: higher gives larger segments.")
    ] = 100.0,
    min_size_m2: Annotated[
        float, typer.Option("--min-size-m2", help="felzenszwalb: smallest segment, m².")
    ] = 12.5,
    sigma_px: Annotated[
        float, typer.Option("--sigma-px", help="canny: Gaussian smoothing, pixels.")
    ] = 1.0,
    edge_low: Annotated[
        float, typer.Option("--edge-low", help="canny: low hysteresis threshold (grey 0..1 Sobel magnitude).")
    ] = 0.1,
    edge_high: Annotated[
        float, typer.Option("--edge-high", help="canny: high hysteresis threshold.")
    ] = 0.2,
    min_length_m: Annotated[
        float, typer.Option("--min-length-m", help="canny: prune spurs and isolated stubs shorter than this, metres.")
    ] = 2.0,
    chunk_px: Annotated[int, typer.Option("--chunk-px", help="Chunk size, pixels.")] = 2048,
    seed: Annotated[int, typer.Option("--seed", help="kmeans: random seed.")] = 0,
    for_labelling: Annotated[
        bool, typer.Option("--for-labelling", help="slic/watershed/felzenszwalb: write labelling.gpkg (+ .qgz), the segments with an empty 'class' field and a QGIS form to fill it by clicks; train on it with `terraseg train IMAGE labelling.gpkg`.")
    ] = False,
    classes: Annotated[
        str | None, typer.Option("--classes", help="--for-labelling: class names in id order, comma-separated (default background,building,road).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Segment a scene without a model: thresholds, spectral indexes, k-means, SLIC, watershed, Felzenszwalb or Canny edges."""
    from terraseg.engine.segment import METHODS, SegmentMethod, segment_scene

    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if classes is not None and not for_labelling:
        raise ConfigError("--classes names the classes of --for-labelling; add --for-labelling")
    res = segment_scene(
        scene, out, method=cast(SegmentMethod, method), expression=expr, band=band,
        index=index, threshold=threshold, k=k, segment_size_m2=segment_size_m2,
        compactness=compactness, scale=scale, min_size_m2=min_size_m2, sigma_px=sigma_px,
        edge_low=edge_low, edge_high=edge_high, min_length_m=min_length_m, chunk_px=chunk_px,
        seed=seed, overwrite=overwrite, labelling=for_labelling,
        classes=None if classes is None else classes.split(","),
    )
    fitted = ""
    if "threshold" in res.params:
        fitted = f", threshold {res.params['threshold']:.4g}"
        fitted += " (Otsu)" if res.params.get("otsu") else ""
    what = "edge lines" if method == "canny" else "segments"
    typer.echo(f"wrote {res.raster} and {res.vectors} ({res.n_segments} {what}{fitted})")
    if for_labelling:
        typer.echo(f"label: open {res.vectors.with_suffix('.qgz')} in QGIS, toggle editing, set "
                   f"'class' on segments; then: terraseg train {scene} {res.vectors} --out MODEL")
