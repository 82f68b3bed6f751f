"""CLI commands for models: ``terraseg models``, ``terraseg models show``, ``terraseg train``.

Registered on the main app in :mod:`terraseg.cli.main`. Thin: parse options, call
one library function, print.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from terraseg.errors import ConfigError

__all__ = ["models_app", "train_command"]

models_app = typer.Typer(
    name="models",
    help="List the built-in and bundled models, or show one model's card.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List the built-in and bundled models, one line each."""
    if ctx.invoked_subcommand is not None:
        return
    from terraseg.models.loading import list_models

    infos = list_models()
    width = max(len(i.name) for i in infos)
    for info in infos:
        typer.echo(f"{info.name:<{width}}  {info.source:<7}  {info.summary}")


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name, weights file or .card.yaml.")],
    card: Annotated[
        Path | None, typer.Option("--card", help="Card to use for a weights file.")
    ] = None,
) -> None:
    """Load a model (checking that card and weights agree) and print its card as YAML."""
    from terraseg.models.loading import load_model

    net, model_card = load_model(name, card=card)
    n_params = sum(p.numel() for p in net.parameters())
    typer.echo(f"# {model_card.name}: {n_params:,} parameters")
    typer.echo(model_card.to_yaml().rstrip())


def _parse_bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(",") if b)
    except ValueError:
        raise ConfigError(f"--bands must be comma-separated band numbers, got '{text}'") from None
    if not bands:
        raise ConfigError("--bands is empty; give e.g. 1,2,3")
    return bands


def _parse_floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got '{text}'") from None


def _parse_layers(items: list[str] | None) -> dict[str, int] | None:
    if not items:
        return None
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ConfigError(f"--layer must be NAME=CLASS (e.g. buildings=1), got '{item}'")
        out[name] = int(value)
    return out


def _parse_pairs(items: list[str] | None, option: str) -> tuple[list[Path], list[Path]]:
    images: list[Path] = []
    labels: list[Path] = []
    for item in items or []:
        image, sep, label = item.partition(",")
        if not sep or not image or not label:
            raise ConfigError(f"{option} must be IMAGE,LABELS, got '{item}'")
        images.append(Path(image))
        labels.append(Path(label))
    return images, labels


def train_command(
    image: Annotated[Path, typer.Argument(help="Training GeoTIFF.")],
    labels: Annotated[
        Path, typer.Argument(help="Labels: GeoPackage (one layer per class), class raster, or the labelling.gpkg of `terraseg segment --for-labelling` (unlabelled segments are ignored).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output stem: writes OUT.safetensors + OUT.card.yaml.")
    ],
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="More training data as IMAGE,LABELS (repeatable)."),
    ] = None,
    val: Annotated[
        list[str] | None,
        typer.Option(
            "--val",
            help="Held-out validation scene as IMAGE,LABELS (repeatable); default: the "
            "southern --val-fraction of each training image.",
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each image held out.")
    ] = 0.2,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Vector layer and its class as NAME=CLASS, burned in order (repeatable); "
            "default roads=2 then buildings=1.",
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="semantic; boundary: buildings get an edge-ring class so touching "
            "buildings come out as separate instances; detection: a Mask R-CNN building "
            "detector.",
        ),
    ] = "semantic",
    edge_px: Annotated[
        int, typer.Option("--edge-px", help="Edge ring width of --task boundary, pixels.")
    ] = 2,
    loss: Annotated[
        str, typer.Option(help="ce, focal, jaccard, dice, ce+dice or lovasz.")
    ] = "ce",
    class_weights: Annotated[
        str | None,
        typer.Option(
            "--class-weights", help="Per-class weights of ce, ce+dice or focal, comma-separated."
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init",
            "--init-from",
            help="Fine-tune: start from this model (bundled name or checkpoint); same task and "
            "classes; another band count is fine (its first convolution is fitted).",
        ),
    ] = None,
    label_extent: Annotated[
        list[str] | None,
        typer.Option(
            "--label-extent",
            help="Vector file of the labelled area (any CRS): labels outside count in no loss. "
            "Once for all images or once per image (IMAGE, then each --extra, in order).",
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Network: Unet, UnetPlusPlus (unet++), FPN or DeepLabV3Plus (deeplabv3+), any "
            "smp name; default the small demo U-Net.",
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Encoder of --arch: any smp/timm name (e.g. resnet34, efficientnet-b0, "
            "tu-convnext_tiny), random weights; default tu-resnet10t.",
        ),
    ] = None,
    gsd_m: Annotated[
        float | None,
        typer.Option(
            "--gsd-m",
            help="Resample the training (and validation) images to this GSD, m/px, first; "
            "the model's card says it.",
        ),
    ] = None,
    monitor: Annotated[
        str,
        typer.Option(
            help="Validation metric (after every epoch) whose best epoch's weights are kept: "
            "val_miou, val_iou_building, val_f1_building (boundary), ...",
        ),
    ] = "val_miou",
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after N epochs without a better --monitor (early stopping)."),
    ] = None,
    val_label_extent: Annotated[
        list[str] | None,
        typer.Option(
            "--val-label-extent",
            help="--label-extent of the --val scenes (once for all or once per scene).",
        ),
    ] = None,
    augment: Annotated[
        str,
        typer.Option(
            help="basic (D4 flips/rotations, ±10 % gain), full (also contrast, hue, scale "
            "±25 %, blur, noise: for real imagery), muted (full and desaturate: a quarter "
            "of the patches pulled towards grey), places (full and colour: any hue, "
            "saturation 0-1.5, for unseen places), none, or names, comma-separated.",
        ),
    ] = "basic",
    bands: Annotated[str, typer.Option(help="1-based image bands, comma-separated.")] = "1,2,3",
    scale: Annotated[float, typer.Option(help="Divisor that scales pixel values.")] = 255.0,
    epochs: Annotated[int | None, typer.Option(help="Epochs of --steps-per-epoch steps.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimiser steps.")] = None,
    steps_per_epoch: Annotated[int, typer.Option("--steps-per-epoch")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per step.")] = 8,
    patch_px: Annotated[int, typer.Option("--patch-px", help="Patch size, pixels.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    name: Annotated[str | None, typer.Option(help="Model name (default: OUT's name).")] = None,
    description: Annotated[str, typer.Option(help="One line for the card.")] = "",
    fp16: Annotated[bool, typer.Option("--fp16", help="Store the weights as float16.")] = False,
    accelerator: Annotated[
        str, typer.Option(help="auto (the GPU when there is one, else the CPU), cpu or gpu.")
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(help="auto (bf16-mixed on a GPU or a CPU with native bfloat16, else 32), "
                     "32, bf16-mixed or 16-mixed (GPU)."),
    ] = "auto",
    max_minutes: Annotated[
        float | None,
        typer.Option("--max-minutes", help="Pause after the first epoch that ends past this many minutes (state in OUT.resume.ckpt; exit status 75); continue with --resume."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the paused or interrupted run in OUT.resume.ckpt (same options).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Train a semantic or boundary model (torchgeo + Lightning); write its weights and card.

    \f
    Long because every training setting is an option here (typer declares
    options as parameters); the body is a dozen lines.
    """
    from terraseg.config import TrainConfig
    from terraseg.models.train import train_semantic

    if epochs is None and max_steps is None:
        raise ConfigError("give --epochs N or --max-steps N")
    more_images, more_labels = _parse_pairs(extra, "--extra")
    val_images, val_labels = _parse_pairs(val, "--val")
    config = TrainConfig.checked({
        "val_fraction": val_fraction, "layers": _parse_layers(layer), "bands": _parse_bands(bands),
        "scale": scale, "epochs": epochs, "max_steps": max_steps, "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size, "patch_px": patch_px, "lr": lr, "seed": seed, "name": name,
        "description": description, "dtype": "float16" if fp16 else "float32", "progress": progress,
        "command": "terraseg " + shlex.join(sys.argv[1:]), "task": task, "edge_px": edge_px,
        "loss": loss, "init_from": init_from, "augment": augment,
        "accelerator": accelerator, "precision": precision, "max_minutes": max_minutes,
        "resume": resume, "label_extent": label_extent or None,
        "val_label_extent": val_label_extent or None,
        "monitor": monitor, "patience": patience, "arch": arch, "encoder": encoder,
        "gsd_m": gsd_m,
        "class_weights": _parse_floats(class_weights, "--class-weights"),
    })
    card = train_semantic(
        [image, *more_images], [labels, *more_labels], out, config,
        val_image=val_images or None, val_labels=val_labels or None, overwrite=overwrite,
    )
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in card.metrics.items() if "iou" in k)
    seconds = card.training.seconds if card.training else float("nan")
    what = f"held-out {metrics}" if metrics else ", ".join(
        f"{k}={v:.3f}" for k, v in card.metrics.items())
    best = card.training.best_epoch if card.training else None
    if best is not None:
        what += f" (epoch {best}; every epoch in {stem}.metrics.csv)"
    typer.echo(f"wrote {stem}.safetensors and {stem}.card.yaml in {seconds:.0f} s; {what}")
