"""Train a semantic segmentation model on GeoTIFFs and vector (or raster) labels with torchgeo.

The path: vector labels are rasterized onto each image's grid, block by
block, into a temporary class raster (:mod:`terraseg.models.labels`);
torchgeo's ``RasterDataset`` reads image and labels, ``IntersectionDataset``
pairs them, ``RandomGeoSampler`` draws training patches and
``GridGeoSampler`` tiles a held-out area (the southern strip of each image,
or separate validation scenes; :mod:`terraseg.models.datasets`); torchgeo's
``SemanticSegmentationTask`` trains under a Lightning ``Trainer`` with the
card's smp architecture (:mod:`terraseg.models.task`), validated after every
epoch (:mod:`terraseg.models.records`). The weights of the best epoch (by
``monitor``) and the card go to ``<out>.safetensors`` and ``<out>.card.yaml``
atomically, with that epoch's per-class IoU on the held-out area in the
card's ``metrics``; every epoch's figures go to ``<out>.metrics.csv``
(written as ``<out>.metrics.csv.part`` while training runs, and left under
that name if it fails).

The settings are one :class:`~terraseg.config.TrainConfig`, shared with a
workflow's ``train:`` section. ``accelerator="auto"`` (the default) trains
on the GPU when torch sees one, else on the CPU; nothing is downloaded
(encoders are built with random weights).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from terraseg.config import TrainConfig
from terraseg.errors import ConfigError, ModelLoadError, OutputExistsError
from terraseg.models.augment import augment_names
from terraseg.models.card import (
    CARD_SUFFIX,
    Architecture,
    ModelCard,
    TrainingInfo,
    _one_line,
    load_card,
)
from terraseg.models.datasets import (
    TrainingAreas,
    as_paths,
    intersection_datasets,
    make_loaders,
    training_areas,
)
from terraseg.models.labels import DEFAULT_LAYERS, LabelWarning, PathLike, rasterize_labels
from terraseg.models.loading import save_model
from terraseg.models.networks import build_network, smp_architecture
from terraseg.models.records import TrainingRecord, metric_names, training_record
from terraseg.models.resume import (
    PauseState,
    check_resume,
    fingerprint,
    pause_callback,
    state_file,
)
from terraseg.models.spec import (
    BOUNDARY_CLASSES,
    DEFAULT_CLASSES,
    ClassInfo,
    InputSpec,
)
from terraseg.models.task import (
    FitResult,
    fit_network,
    hardware,
    quiet,
    resolve_accelerator,
    resolve_precision,
    versions,
)

__all__ = [
    "DEFAULT_LAYERS",
    "DEMO_ARCHITECTURE",
    "LabelWarning",
    "TrainConfig",
    "rasterize_labels",
    "train_semantic",
]

log = logging.getLogger(__name__)

_SEMANTIC_ONLY = ("label_extent", "gsd_m", "arch", "encoder", "patience", "max_minutes")
"""Settings the detection trainer does not implement (refused there, not ignored)."""

METRICS_SUFFIX = ".metrics.csv"
"""Per-epoch validation figures go to ``<out>.metrics.csv``, beside the weights and card."""

DEMO_ARCHITECTURE: dict[str, Any] = {
    "library": "smp",
    "name": "Unet",
    "kwargs": {
        "encoder_name": "tu-resnet10t",
        "encoder_depth": 4,
        "decoder_channels": [64, 32, 16, 16],
    },
}
"""A small U-Net (1.6 M parameters, 3.2 MB in fp16): timm ResNet-10-T, 4 stages (stride 16)."""


@dataclass(frozen=True, slots=True)
class _Setup:
    """Checked settings and the card the network is built from (no training results yet)."""

    cfg: TrainConfig
    card: ModelCard
    layers: dict[str, int]
    init: _Init | None = None


@dataclass(frozen=True, slots=True)
class _Init:
    """Weights to start from (``init_from``): the state dict and how the card names them."""

    state: dict[str, Any]
    note: str


def train_semantic(
    image: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike],
    out: PathLike,
    config: TrainConfig | None = None,
    *,
    val_image: PathLike | Sequence[PathLike] | None = None,
    val_labels: PathLike | Sequence[PathLike] | None = None,
    overwrite: bool = False,
    **overrides: object,
) -> ModelCard:
    """Train a semantic segmentation model and write ``<out>.safetensors`` + ``<out>.card.yaml``.

    Parameters
    ----------
    image, labels
        One training GeoTIFF (or a list) and its labels: a vector file whose
        ``layers`` are burned as classes, or a uint8 class raster. Labels are
        reprojected to the image CRS.
    out
        Output stem: writes ``<out>.safetensors`` and ``<out>.card.yaml``.
    config
        The training settings (:class:`~terraseg.config.TrainConfig`; a
        workflow's ``train:`` section works too); default ``TrainConfig()``.
    val_image, val_labels
        Held-out validation scene(s). Without them the southern
        ``val_fraction`` of every training image (whole patches) is held out:
        no training patch reaches it.
    overwrite
        Replace existing outputs.
    **overrides
        Settings that replace those of ``config``, validated by
        :class:`~terraseg.config.TrainConfig`, e.g. ``max_steps=100,
        patch_px=128``. The main ones: ``epochs``/``max_steps``/
        ``steps_per_epoch`` (length: whichever ends first), ``batch_size``,
        ``patch_px``, ``lr``, ``loss``, ``class_weights``, ``bands``/``scale``
        (what the model reads), ``layers`` (vector layer → class, burned in
        order; default roads=2 then buildings=1), ``classes`` (default
        background/building/road), ``architecture`` (default
        :data:`DEMO_ARCHITECTURE`; ``in_channels`` and ``classes`` are filled
        in), ``seed``, ``dtype`` (``"float16"`` halves the file),
        ``command``/``data_notes`` (recorded in the card's ``training``).

    Returns
    -------
    ModelCard
        The written card (with ``metrics`` such as ``val_iou_building``).

    Raises
    ------
    ConfigError
        Unknown or bad settings, unreadable labels, labels that do not overlap
        the image, an image too small for the patch size.
    BandError
        An image lacks the requested bands.
    OutputExistsError
        ``<out>.*`` exists and ``overwrite`` is false (checked before training).
    """
    t0 = time.perf_counter()
    weights_path, card_path, csv_path = _out_paths(out, overwrite=overwrite)
    cfg = (config if config is not None else TrainConfig()).with_overrides(overrides)
    if cfg.task == "detection":
        return _detection(image, labels, weights_path, cfg, overwrite=overwrite)
    setup = _setup(cfg, stem=weights_path.stem)
    state_path = state_file(weights_path)
    run = PauseState(
        fingerprint(cfg, *(as_paths(p) if p is not None else None
                           for p in (image, labels, val_image, val_labels))),
        minutes=cfg.max_minutes,
    )
    resumed = check_resume(state_path, cfg, run.fingerprint, overwrite=overwrite)
    partial_csv = csv_path.with_name(csv_path.name + ".part")
    partial_csv.parent.mkdir(parents=True, exist_ok=True)  # a new output folder
    with tempfile.TemporaryDirectory(prefix="terraseg-train-") as tmp:
        workdir = Path(tmp)
        areas = training_areas(
            image,
            labels,
            val_image,
            val_labels,
            layers=setup.layers,
            cfg=cfg,
            n_classes=setup.card.n_classes,
            workdir=workdir,
        )
        fit, record = _fit_and_score(
            setup, areas, workdir, partial_csv, resume=(state_path, run, resumed)
        )
    if run.paused:
        raise run.pause_error(record.epochs[-1], state_path)
    seconds = run.before + time.perf_counter() - t0  # this run and the paused ones
    card = _final_card(setup, areas, fit, record, seconds, csv_path.name, runs=run.runs)
    save_model(fit.net, card, weights_path.with_suffix(""), dtype=cfg.dtype, overwrite=overwrite)
    partial_csv.replace(csv_path)
    state_path.unlink(missing_ok=True)
    metrics = card.metrics
    log.info("trained %s in %.0f s: %s", card.name, seconds, metrics)
    return load_card(card_path)


def _detection(
    image: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike],
    weights_path: Path,
    cfg: TrainConfig,
    *,
    overwrite: bool,
) -> ModelCard:
    """Task ``detection``: :func:`~terraseg.models.train_detection.train_detection`."""
    if cfg.epochs is None and cfg.max_steps is None:
        raise ConfigError("give epochs or max_steps (e.g. --epochs 10)")
    unsupported = [k for k in _SEMANTIC_ONLY if getattr(cfg, k) is not None]
    unsupported += ["resume"] if cfg.resume else []
    if unsupported:
        raise ConfigError(
            f"task 'detection' does not take {', '.join(unsupported)} (semantic and boundary "
            "training only); drop them or train --task boundary"
        )
    from terraseg.models.train_detection import train_detection

    return train_detection(
        as_paths(image), as_paths(labels), weights_path.with_suffix(""), cfg, overwrite=overwrite
    )


def _out_paths(out: PathLike, *, overwrite: bool) -> tuple[Path, Path, Path]:
    """``<out>.safetensors``, ``.card.yaml`` and ``.metrics.csv``, refused if present.

    (Unless ``overwrite``.)
    """
    p = Path(out)
    if p.suffix == ".safetensors":
        p = p.with_suffix("")
    paths = (
        p.with_name(p.name + ".safetensors"),
        p.with_name(p.name + CARD_SUFFIX),
        p.with_name(p.name + METRICS_SUFFIX),
    )
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"output '{path}' already exists; pass --overwrite (overwrite=True) to replace it",
                path=path,
            )
    return paths


def _setup(cfg: TrainConfig, *, stem: str) -> _Setup:
    """Check what the settings model cannot alone, and build the provisional card."""
    if cfg.epochs is None and cfg.max_steps is None:
        raise ConfigError("give epochs or max_steps (e.g. --epochs 10)")
    try:
        classes = (
            tuple(ClassInfo.model_validate(c) for c in cfg.classes)
            if cfg.classes is not None
            else BOUNDARY_CLASSES
            if cfg.task == "boundary"
            else DEFAULT_CLASSES
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid classes: {_one_line(exc)}") from None
    resolve_precision(cfg.precision, resolve_accelerator(cfg.accelerator))  # fails early
    init = _load_init(cfg, classes)
    if cfg.architecture is not None and (cfg.arch or cfg.encoder):
        raise ConfigError("give architecture or arch/encoder, not both")
    if cfg.arch or cfg.encoder:
        arch_data = smp_architecture(cfg.arch, cfg.encoder)
    else:
        arch_data = dict(cfg.architecture or (init.architecture if init else DEMO_ARCHITECTURE))
    kwargs = dict(arch_data.get("kwargs") or {})
    kwargs.update(in_channels=len(cfg.bands), classes=len(classes))
    try:
        arch = Architecture.model_validate({**arch_data, "kwargs": kwargs})
    except ValidationError as exc:
        raise ConfigError(f"invalid architecture {arch_data}: {_one_line(exc)}") from None
    try:  # before any data is read: an unknown encoder or a bad keyword fails here
        build_network(arch, source="the training settings", fix="check arch/encoder "
                      "(--arch/--encoder) or architecture")
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None
    if arch.name == "DeepLabV3Plus" and cfg.batch_size < 2:
        raise ConfigError(
            "DeepLabV3Plus needs batch_size ≥ 2 (its image pooling normalises over the batch); "
            "e.g. --batch-size 4"
        )
    depth = int(kwargs.get("encoder_depth", 5))
    if cfg.patch_px < 32 or cfg.patch_px % (2**depth):
        raise ConfigError(
            f"patch_px={cfg.patch_px} must be ≥ 32 and a multiple of {2**depth} "
            f"(encoder depth {depth}); e.g. 256",
        )
    if cfg.class_weights is not None and cfg.loss not in ("ce", "ce+dice", "focal"):
        raise ConfigError(
            f"class_weights apply to the losses ce, ce+dice and focal, not {cfg.loss}; drop "
            "--class-weights or choose one of those"
        )
    if cfg.class_weights is not None and len(cfg.class_weights) != len(classes):
        raise ConfigError(
            f"class_weights has {len(cfg.class_weights)} values for {len(classes)} classes "
            f"({', '.join(c.name for c in classes)}); give one weight per class"
        )
    try:
        augment_names(cfg.augment)
    except ValueError as exc:
        raise ConfigError(f"augment: {exc}") from None
    if cfg.monitor not in metric_names(classes):
        raise ConfigError(
            f"monitor '{cfg.monitor}' is not a validation metric; use one of "
            f"{', '.join(metric_names(classes))}"
        )
    layers = dict(cfg.layers or DEFAULT_LAYERS)
    if any(v >= len(classes) or v < 0 for v in layers.values()):
        raise ConfigError(f"layer classes {layers} must be class ids 0..{len(classes) - 1}")
    if cfg.task == "boundary" and [c.name for c in classes[:4]] != [
        c.name for c in BOUNDARY_CLASSES
    ]:
        raise ConfigError(
            f"task 'boundary' trains the classes {[c.name for c in BOUNDARY_CLASSES]}; "
            f"got {[c.name for c in classes]}: leave 'classes' unset"
        )
    try:
        card = ModelCard(
            name=cfg.name or stem,
            task=cfg.task,
            input=InputSpec(bands=cfg.bands, normalization="scale", scale=cfg.scale),
            classes=classes,
            architecture=arch,
            description=cfg.description,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid model settings: {_one_line(exc)}") from None
    if init is not None and arch != init.architecture:
        raise ConfigError(
            f"init_from '{cfg.init_from}' has the architecture {init.architecture.name} "
            f"{init.architecture.kwargs}, not the one given; leave architecture unset to "
            "fine-tune it"
        )
    return _Setup(cfg, card, layers, _Init(init.state, init.note) if init else None)


@dataclass(frozen=True, slots=True)
class _Start:
    state: dict[str, Any]
    architecture: Architecture
    note: str


def _load_init(cfg: TrainConfig, classes: tuple[ClassInfo, ...]) -> _Start | None:
    """The weights of ``cfg.init_from``, checked against task and classes, fitted to the bands."""
    if cfg.init_from is None:
        return None
    from terraseg.models.card import file_sha256
    from terraseg.models.loading import load_model

    net, card = load_model(cfg.init_from)
    problems = []
    if card.task != cfg.task:
        problems.append(f"its task is {card.task}, not {cfg.task}")
    if [c.name for c in card.classes] != [c.name for c in classes]:
        problems.append(
            f"its classes are {[c.name for c in card.classes]}, not {[c.name for c in classes]}"
        )
    if card.architecture.library not in ("smp", "torchvision"):
        problems.append(f"its architecture is {card.architecture.library}, not a trainable one")
    if problems:
        raise ConfigError(
            f"cannot fine-tune from '{cfg.init_from}': {'; '.join(problems)}; pick a model "
            "trained for the same task and classes",
            init_from=cfg.init_from,
        )
    given = Path(cfg.init_from)
    sha = card.weights_sha256 or (file_sha256(given) if given.is_file() else None)
    note = card.name + (f" (weights sha256 {sha[:12]}…)" if sha else "")
    state = dict(net.state_dict())
    old_n, new_n = card.input.n_bands, len(cfg.bands)
    if old_n != new_n:  # 3-band model, 1-band or 4-band data: fit the first convolution
        from terraseg.models.finetune import adapt_input_conv, first_conv_key

        key = first_conv_key(state, old_n)
        if key is None:
            raise ConfigError(
                f"cannot fine-tune from '{cfg.init_from}': it reads {old_n} band(s) and its first "
                f"convolution was not found to fit it to {new_n}; give --bands with {old_n} bands",
                init_from=cfg.init_from,
            )
        state[key] = adapt_input_conv(state[key], new_n)
        note += f"; first convolution fitted from {old_n} to {new_n} band(s)"
    arch = card.architecture
    kwargs = {**arch.kwargs, "in_channels": new_n}
    return _Start(state, arch.model_copy(update={"kwargs": kwargs}), note)


def _schedule(cfg: TrainConfig) -> tuple[int, int]:
    """Total optimiser steps and the epochs that hold them."""
    total_steps = cfg.max_steps if cfg.max_steps is not None else 0
    if cfg.epochs is not None:
        by_epochs = cfg.epochs * cfg.steps_per_epoch
        total_steps = min(total_steps, by_epochs) if cfg.max_steps is not None else by_epochs
    return total_steps, math.ceil(total_steps / cfg.steps_per_epoch)


def _fit_and_score(
    setup: _Setup,
    areas: TrainingAreas,
    workdir: Path,
    csv_path: Path,
    *,
    resume: tuple[Path, PauseState, bool],
) -> tuple[FitResult, TrainingRecord]:
    """Seed, build datasets and loaders, train with validation after every epoch.

    The returned network holds the weights of the best epoch by ``cfg.monitor``.
    """
    import lightning.pytorch as pl

    cfg = setup.cfg
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with quiet():
        train_sets = intersection_datasets(areas.train)
        val_sets = intersection_datasets(areas.val) if areas.held_out_scenes else train_sets
    total_steps, n_epochs = _schedule(cfg)
    train_loader, val_loader = make_loaders(train_sets, val_sets, areas, setup.card.input, cfg)
    callback, record = training_record(
        val_loader,
        setup.card.classes,
        monitor=cfg.monitor,
        patience=cfg.patience,
        csv_path=csv_path,
        total_steps=total_steps,
        n_epochs=n_epochs,
        progress=cfg.progress,
    )
    state_path, run, resumed = resume
    pause = pause_callback(
        state_path, run, train_loader, total_steps=total_steps, resumed=resumed
    )
    fit = fit_network(
        setup.card,
        train_loader,
        cfg,
        total_steps=total_steps,
        n_epochs=n_epochs,
        workdir=workdir,
        init_state=setup.init.state if setup.init else None,
        callbacks=[callback, pause],
        resume_from=state_path if resumed else None,
    )
    if record.best_state is not None:
        fit.net.load_state_dict(record.best_state)
    return fit, record


def _final_card(
    setup: _Setup,
    areas: TrainingAreas,
    fit: FitResult,
    record: TrainingRecord,
    seconds: float,
    csv_name: str,
    *,
    runs: int = 1,
) -> ModelCard:
    """The provisional card with its GSD, ``training`` record, metrics and what they measure."""
    cfg = setup.cfg
    best = record.best
    if best is None:
        raise ConfigError("training ran no step, so nothing was validated; give max_steps ≥ 1")
    gsds = [p.image.gsd_m for p in areas.train]
    held_out = (
        f"held-out scene(s) {', '.join(Path(p.image.path).name for p in areas.val)}"
        if areas.held_out_scenes
        else f"the southern {cfg.val_fraction:.0%} of each training image (no training patch "
        "reaches it)"
    )
    card = setup.card.model_copy(
        update={
            "gsd_m": cfg.gsd_m if cfg.gsd_m is not None else float(f"{np.mean(gsds):.3g}"),
            "gsd_tolerance": cfg.gsd_tolerance,
            "training": TrainingInfo(
                data=list(cfg.data_notes) or [Path(p.image.path).name for p in areas.train],
                command=cfg.command if runs == 1 or cfg.command is None else (
                    f"{cfg.command} (in {runs} runs: with --max-minutes "
                    f"{cfg.max_minutes or 0:g}, then the same with --resume)"
                ),
                init_from=setup.init.note if setup.init else None,
                seed=cfg.seed,
                epochs=len(record.epochs),
                steps=fit.steps,
                best_epoch=best.epoch,
                best_step=best.step,
                monitor=cfg.monitor,
                batch_size=cfg.batch_size,
                patch_px=cfg.patch_px,
                lr=cfg.lr,
                seconds=round(seconds, 1),
                hardware=hardware(cfg.accelerator),
                precision=fit.precision,
                software=versions(),
            ),
            "metrics": best.metrics,
            "evaluation": f"val_*: pixel IoU per class on {held_out}, {cfg.patch_px}-px "
            f"patches, after epoch {best.epoch} of {len(record.epochs)} (step {best.step}; the "
            f"best {cfg.monitor}{', then stopped early' if record.stopped_early else ''}; "
            f"every epoch in {csv_name})",
        }
    )
    return ModelCard.model_validate(card.model_dump())
