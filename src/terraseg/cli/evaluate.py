"""CLI command ``terraseg evaluate``: scores, a rich table or JSON, an error map.

Registered on the main app in :mod:`terraseg.cli.main`. Thin: parse options, call
:func:`terraseg.evaluate.scores.evaluate`, print. The error map (``--figure``) is drawn
here because it is presentation only: false positives in red, false negatives
in blue, over a quick-look of ``--image`` (read decimated, never at full
resolution) or a blank background.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from terraseg.errors import ConfigError

if TYPE_CHECKING:
    from terraseg.evaluate.scores import EvaluationReport

__all__ = ["evaluate_command", "plot_errors", "render_report"]

_QUICKLOOK_PX = 1024


def evaluate_command(
    pred: Annotated[
        Path,
        typer.Argument(
            help="Prediction: vector file (GPKG, GeoJSON, FlatGeobuf, GeoParquet) or class GeoTIFF."
        ),
    ],
    truth: Annotated[Path, typer.Argument(help="Truth: the same kind of file as PRED.")],
    pred_layer: Annotated[
        str | None,
        typer.Option("--pred-layer", help="Layer of PRED (default: by name/geometry type)."),
    ] = None,
    truth_layer: Annotated[
        str | None,
        typer.Option("--truth-layer", help="Layer of TRUTH (default: by name/geometry type)."),
    ] = None,
    task: Annotated[str, typer.Option("--task", help="buildings, roads, pixels or auto.")] = "auto",
    min_area_m2: Annotated[
        float,
        typer.Option(
            "--min-area-m2", help="Ignore buildings smaller than this (m²) on both sides."
        ),
    ] = 0.0,
    buffer_m: Annotated[
        float, typer.Option("--buffer-m", help="Road matching buffer, metres.")
    ] = 2.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the APLS pair sampling.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
    figure: Annotated[
        Path | None,
        typer.Option(
            "--figure", help="Write an error map PNG (needs matplotlib): FP red, FN blue."
        ),
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Scene GeoTIFF drawn under the error map.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --figure file.")
    ] = False,
) -> None:
    """Score a prediction against truth: building F1 (IoU 0.5), road F1 and APLS, pixel IoU."""
    from terraseg.evaluate.scores import evaluate

    if image is not None and figure is None:
        raise ConfigError("--image is drawn under the error map; pass --figure errors.png too")
    if figure is not None and figure.exists() and not overwrite:
        raise ConfigError(f"'{figure}' exists; pass --overwrite to replace it", path=str(figure))
    from terraseg.evaluate.scores import EvaluationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        report = evaluate(
            pred,
            truth,
            task=task,  # type: ignore[arg-type]  # validated by evaluate()
            pred_layer=pred_layer,
            truth_layer=truth_layer,
            min_area_m2=min_area_m2,
            buffer_m=buffer_m,
            seed=seed,
        )
        if figure is not None:
            plot_errors(report, figure, image=image)
    for w in caught:
        if issubclass(w.category, EvaluationWarning):
            typer.echo(f"terraseg: warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        render_report(report)
        if figure is not None:
            typer.echo(f"error map written to {figure}")


# --------------------------------------------------------------------------- table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def render_report(report: EvaluationReport) -> None:
    """Print ``report`` as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]prediction[/] {report.pred}\n[bold]truth[/]      {report.truth}")
    if report.metric_crs is not None:
        console.print(f"measured in {report.metric_crs.to_string()} (metres)")
    if report.buildings is not None:
        b = report.buildings
        table = Table(title=f"Buildings (one-to-one at IoU >= {b.iou_threshold:g})")
        cols = ["truth", "pred", "TP", "FP", "FN", "precision", "recall", "F1", "mean IoU"]
        row = [b.n_truth, b.n_pred, b.tp, b.fp, b.fn, b.precision, b.recall, b.f1, b.mean_iou]
        if b.ap is not None:
            cols.append(f"AP@{b.iou_threshold:g}")
            row.append(b.ap)
        for col in cols:
            table.add_column(col, justify="right")
        table.add_row(*map(_fmt, row))
        console.print(table)
        if b.f1_by_score:
            best = max(b.f1_by_score, key=lambda sf: sf[1])
            console.print(
                "F1 by score threshold: "
                + ", ".join(f"≥{s:g}: {f:.3f}" for s, f in b.f1_by_score)
                + f" (best {best[1]:.3f} at ≥{best[0]:g})"
            )
    if report.roads is not None:
        r = report.roads
        table = Table(title=f"Roads (centerlines within {r.buffer_m:g} m)")
        road_cols = ("truth km", "pred km", "precision", "recall", "F1", "APLS", "t→p", "p→t")
        for col in road_cols:
            table.add_column(col, justify="right")
        table.add_row(
            *map(
                _fmt,
                (
                    r.truth_length_m / 1000,
                    r.pred_length_m / 1000,
                    r.precision,
                    r.recall,
                    r.f1,
                    r.apls.apls,
                    r.apls.truth_to_pred,
                    r.apls.pred_to_truth,
                ),
            )
        )
        console.print(table)
    if report.pixels is not None:
        px = report.pixels
        table = Table(
            title=f"Pixels ({px.n_pixels:,} compared, {px.n_ignored:,} nodata; "
            f"accuracy {px.accuracy:.4f}, mean IoU {px.mean_iou:.4f})"
        )
        for col in ("class", "IoU", "precision", "recall", "F1", "truth px", "pred px"):
            table.add_column(col, justify="right")
        for name, v in px.to_dict()["classes"].items():
            table.add_row(
                f"{name} ({v['value']})",
                *map(
                    _fmt,
                    (v["iou"], v["precision"], v["recall"], v["f1"], v["truth_px"], v["pred_px"]),
                ),
            )
        console.print(table)


# --------------------------------------------------------------------------- figure


def plot_errors(
    report: EvaluationReport, path: str | Path, *, image: str | Path | None = None
) -> Path:
    """Draw false positives (red) and false negatives (blue) into a PNG.

    Vector tasks draw the unmatched buildings and the road stretches outside the
    buffer; the pixel task draws a decimated map (at most 1024 px a side, nearest
    neighbour) where red is a predicted class that the truth does not have there
    and blue a true class predicted as background. Under them, a quick-look of
    ``image`` (decimated, 2-98 % stretch) in its CRS, or a white background.

    Raises
    ------
    ConfigError
        matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "--figure needs matplotlib; install it (pip install matplotlib) or drop --figure"
        ) from exc
    from terraseg.io.atomic import atomic_output

    fig, ax = plt.subplots(figsize=(10, 10))
    try:
        crs = None
        if image is not None:
            crs = _draw_quicklook(ax, Path(image))
        if report.pixels is not None:
            _draw_pixel_errors(ax, report)
        elif report.errors is not None:
            errs = report.errors if crs is None else report.errors.to_crs(crs)
            for kind, colour in (("FN", "tab:blue"), ("FP", "red")):
                sel = errs[errs["error"] == kind]
                if len(sel):
                    sel.plot(ax=ax, color=colour, edgecolor=colour, linewidth=1.5, alpha=0.7)
            ax.set_aspect("equal")
        ax.set_title(f"{report.pred.name} vs {report.truth.name}: FP red, FN blue", fontsize=10)
        with atomic_output(Path(path), overwrite=True) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _decimated_shape(shape: tuple[int, int]) -> tuple[int, int]:
    f = max(1.0, max(shape) / _QUICKLOOK_PX)
    return max(1, round(shape[0] / f)), max(1, round(shape[1] / f))


def _draw_quicklook(ax: Any, image: Path) -> Any:
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    from terraseg.io.scene import open_scene

    scene = open_scene(image)
    bands = [1, 2, 3] if scene.count >= 3 else [1]
    with rasterio.open(scene.path) as ds:
        arr = ds.read(
            bands,
            out_shape=(len(bands), *_decimated_shape(scene.shape)),
            resampling=Resampling.nearest,
            masked=True,
        ).astype(np.float64)
    data = arr.filled(np.nan)
    lo, hi = np.nanpercentile(data, 2), np.nanpercentile(data, 98)
    rgb = np.clip((data - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.nan_to_num(np.moveaxis(rgb, 0, -1), nan=1.0)
    b = scene.bounds
    ax.imshow(
        rgb if len(bands) == 3 else rgb[..., 0],
        extent=(b.left, b.right, b.bottom, b.top),
        cmap=None if len(bands) == 3 else "gray",
    )
    return scene.crs


def _draw_pixel_errors(ax: Any, report: EvaluationReport) -> None:
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(report.pred) as dp, rasterio.open(report.truth) as dt:
        shape = _decimated_shape((dt.height, dt.width))
        p = dp.read(1, out_shape=shape, resampling=Resampling.nearest)
        t = dt.read(1, out_shape=shape, resampling=Resampling.nearest)
        b = dt.bounds
    valid = (p != 255) & (t != 255)
    fp = valid & (p != t) & (p != 0)
    fn = valid & (p != t) & (p == 0)
    rgba = np.zeros((*shape, 4))
    rgba[fp] = (1.0, 0.0, 0.0, 0.8)
    rgba[fn] = (0.12, 0.47, 0.71, 0.8)
    ax.imshow(rgba, extent=(b.left, b.right, b.bottom, b.top))
