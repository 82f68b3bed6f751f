"""Train the Mask R-CNN building detector (task ``detection``) on GeoTIFFs and vector labels.

Chips of ``patch_px`` are drawn at random positions of the training images
(windowed reads: no image is ever read whole). Each chip's buildings are the
label polygons that meet it, burned with their own ids
(:func:`rasterio.features.rasterize` over the chip only), and become
torchvision's detection targets (:func:`terraseg.instances.targets.detection_targets`:
boxes, masks, labels). Chips get random flips and quarter turns. The network is
:func:`terraseg.models.detector.build_maskrcnn` from random weights, trained
with AdamW under a one-cycle schedule; weights and card go to
``<out>.safetensors`` and ``<out>.card.yaml`` like every terraseg model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraseg.config import TrainConfig
from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError
from terraseg.instances.targets import detection_targets
from terraseg.io.scene import Scene, open_scene
from terraseg.models.card import Architecture, ModelCard, TrainingInfo, load_card
from terraseg.models.detector import DETECTOR_DEFAULTS, build_maskrcnn
from terraseg.models.labels import DEFAULT_LAYERS, PathLike, read_layers
from terraseg.models.loading import save_model
from terraseg.models.spec import DEFAULT_CLASSES, InputSpec
from terraseg.models.task import hardware, versions

__all__ = ["DETECTION_CLASSES", "train_detection"]

log = logging.getLogger(__name__)

DETECTION_CLASSES = (
    DEFAULT_CLASSES[0],
    DEFAULT_CLASSES[1],
)
"""Classes of a building detector (torchvision counts background as class 0)."""


@dataclass(slots=True)
class _Area:
    """One training image and its building polygons (scene CRS) with a spatial index."""

    scene: Scene
    shapes: list[Any]
    tree: Any


def _areas(images: Sequence[Path], labels: Sequence[Path], cfg: TrainConfig) -> list[_Area]:
    import shapely

    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} image(s) but {len(labels)} label file(s); pair them")
    building = 1
    layers = {k: v for k, v in (cfg.layers or DEFAULT_LAYERS).items() if v == building}
    out = []
    for image, label in zip(images, labels, strict=True):
        scene = open_scene(image)
        scene.check_bands(cfg.bands)
        if min(scene.shape) < cfg.patch_px:
            raise ConfigError(
                f"image '{image}' ({scene.shape[1]}x{scene.shape[0]} px) is smaller than patch_px="
                f"{cfg.patch_px}; use a smaller --patch-px", path=image,
            )
        shapes = [g for g, _ in read_layers(Path(label), layers, scene)]
        out.append(_Area(scene, shapes, shapely.STRtree(shapes)))
    if not any(a.shapes for a in out):
        raise ConfigError(f"no buildings in {', '.join(map(str, labels))}; nothing to detect")
    return out


def _chip(area: _Area, rng: np.random.Generator, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(bands, p, p)`` float32 chip and its ``(p, p)`` building ids."""
    from rasterio.features import rasterize
    from shapely.geometry import box

    p = cfg.patch_px
    r = int(rng.integers(0, area.scene.shape[0] - p + 1))
    c = int(rng.integers(0, area.scene.shape[1] - p + 1))
    window = PixelWindow(r, c, p, p)
    image, transform = area.scene.read_window(window, bands=cfg.bands)
    x0, y1 = transform * (0, 0)
    x1, y0 = transform * (p, p)
    hits = area.tree.query(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    shapes = [(area.shapes[int(i)], n) for n, i in enumerate(sorted(hits), start=1)]
    ids = (rasterize(shapes, out_shape=(p, p), transform=transform, dtype="int32")
           if shapes else np.zeros((p, p), np.int32))
    k = int(rng.integers(0, 4))
    image, ids = np.rot90(image, k, axes=(1, 2)), np.rot90(ids, k)
    if rng.random() < 0.5:
        image, ids = image[:, :, ::-1], ids[:, ::-1]
    chip = np.ascontiguousarray(image, dtype=np.float32) / np.float32(cfg.scale)
    return chip, np.ascontiguousarray(ids)


def _batch(
    areas: list[_Area], rng: np.random.Generator, cfg: TrainConfig
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images: list[torch.Tensor] = []
    targets: list[dict[str, torch.Tensor]] = []
    while len(images) < cfg.batch_size:
        chip, ids = _chip(areas[int(rng.integers(0, len(areas)))], rng, cfg)
        boxes, masks, _ = detection_targets(ids, min_px=8)
        if len(boxes) == 0 and rng.random() < 0.8:
            continue  # mostly chips with buildings
        images.append(torch.from_numpy(chip))
        targets.append({"boxes": torch.from_numpy(boxes),
                        "labels": torch.ones(len(boxes), dtype=torch.int64),
                        "masks": torch.from_numpy(masks)})
    return images, targets


def _card(cfg: TrainConfig, name: str, gsd: float) -> ModelCard:
    kwargs = {**DETECTOR_DEFAULTS, "in_channels": len(cfg.bands),
              "num_classes": len(DETECTION_CLASSES)}
    return ModelCard(
        name=name, task="detection",
        input=InputSpec(bands=cfg.bands, normalization="scale", scale=cfg.scale),
        classes=DETECTION_CLASSES,
        architecture=Architecture(library="torchvision", name="MaskRCNN", kwargs=kwargs),
        description=cfg.description, gsd_m=float(f"{gsd:.3g}"),
        gsd_tolerance=cfg.gsd_tolerance,
    )


def train_detection(
    image: Sequence[PathLike], labels: Sequence[PathLike], out: Path, cfg: TrainConfig, *,
    overwrite: bool = False,
) -> ModelCard:
    """Train the building detector; write ``<out>.safetensors`` and ``<out>.card.yaml``.

    Called by :func:`terraseg.models.train.train_semantic` for ``task="detection"``
    (``terraseg train --task detection``): it uses ``bands``, ``scale``,
    ``layers`` (the layers burned as class 1 are the buildings), ``patch_px``,
    ``batch_size``, ``max_steps``/``epochs``, ``lr``, ``seed``, ``dtype``,
    ``name``, ``description``, ``command`` and ``data_notes``.
    """
    t0 = time.perf_counter()
    areas = _areas([Path(p) for p in image], [Path(p) for p in labels], cfg)
    steps = cfg.max_steps or (cfg.epochs or 1) * cfg.steps_per_epoch
    if cfg.epochs is not None:
        steps = min(steps, cfg.epochs * cfg.steps_per_epoch)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    card = _card(cfg, cfg.name or out.name, float(np.mean([a.scene.gsd_m for a in areas])))
    net = build_maskrcnn(**card.architecture.kwargs)
    if cfg.init_from is not None:
        from terraseg.models.loading import load_model

        start, start_card = load_model(cfg.init_from)
        if start_card.architecture != card.architecture:
            raise ConfigError(f"cannot fine-tune from '{cfg.init_from}': it is not a "
                              f"{card.architecture.name} with these settings")
        net.load_state_dict(start.state_dict())
    losses = _fit(net, areas, rng, cfg, steps)
    seconds = time.perf_counter() - t0
    card = card.model_copy(update={
        "training": TrainingInfo(
            data=list(cfg.data_notes) or [Path(a.scene.path).name for a in areas],
            command=cfg.command, init_from=cfg.init_from, seed=cfg.seed,
            epochs=math.ceil(steps / cfg.steps_per_epoch), steps=steps,
            batch_size=cfg.batch_size, patch_px=cfg.patch_px, lr=cfg.lr,
            seconds=round(seconds, 1), hardware=hardware("cpu"), precision="32",
            software=versions(),
        ),
        "metrics": {"train_loss": round(float(np.mean(losses[-50:])), 4)},
        "evaluation": "train_loss: mean Mask R-CNN loss (sum of its five terms) over the last "
        "50 steps",
    })
    card = ModelCard.model_validate(card.model_dump())
    save_model(net.eval(), card, out, dtype=cfg.dtype, overwrite=overwrite)
    log.info("trained %s in %.0f s", card.name, seconds)
    return load_card(out.with_name(out.name + ".card.yaml"))


def _fit(net: torch.nn.Module, areas: list[_Area], rng: np.random.Generator, cfg: TrainConfig,
         steps: int) -> list[float]:
    """AdamW + one-cycle for ``steps`` steps; the loss of each step."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps,
                                                   pct_start=0.1)
    net.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        images, targets = _batch(areas, rng, cfg)
        loss_dict = net(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if cfg.progress and (step % 25 == 0 or step == steps):
            print(f"step {step}/{steps}: loss {np.mean(losses[-25:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return losses
