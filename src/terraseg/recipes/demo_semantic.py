"""Reproduce the bundled demo model ``demo-semantic`` (background / building / road).

Writes ``demo-semantic.safetensors`` and ``demo-semantic.card.yaml`` into the
bundled folder ``terraseg/models/bundled`` (or ``--out``). Run from a checkout
(about 15 minutes on a 2-core CPU)::

    python -m terraseg.recipes.demo_semantic            # train + evaluate
    python -m terraseg.recipes.demo_semantic --eval-only

What it does, all with this project's own code and nothing downloaded:

1. generates synthetic cities with :func:`terraseg.synthetic.make_city` at
   0.5 m: training scenes with seeds 11, 12, 13 (2048² px each), a validation
   scene with seed 14 (1024² px) and an evaluation scene with seed 7
   (2048² px); none of the evaluation pixels is used for training;
2. trains with :func:`terraseg.models.train.train_semantic` (torchgeo datasets and
   samplers, ``SemanticSegmentationTask`` under Lightning, seed 0), the
   equivalent of::

       terraseg train train11.tif train11.truth.gpkg --extra train12.tif,train12.truth.gpkg \\
           --extra train13.tif,train13.truth.gpkg --val val14.tif,val14.truth.gpkg \\
           --out demo-semantic --max-steps 600 --steps-per-epoch 100 --batch-size 8 \\
           --patch-px 256 --lr 0.002 --seed 0 --fp16

3. predicts the evaluation scene with :func:`terraseg.engine.pipeline.predict_scene`
   (tile 512, overlap 64) and stores the pixel IoU of ``classes.tif`` against
   ``<stem>.truth.tif`` in the card's ``metrics`` (``eval_iou_*``).

Results depend on the torch/timm versions (recorded in the card) and, in the
last digits, on the CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from terraseg.config import TrainConfig
from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import predict_scene
from terraseg.models import bundled
from terraseg.models.card import load_card, save_card
from terraseg.models.loading import load_model
from terraseg.models.train import DEMO_ARCHITECTURE, train_semantic
from terraseg.synthetic import make_city

BUNDLED = Path(bundled.__file__).resolve().parent
"""Where the bundled models live: ``src/terraseg/models/bundled`` in a checkout."""
NAME = "demo-semantic"
TRAIN_SEEDS = (11, 12, 13)
VAL_SEED = 14
EVAL_SEED = 7
SCENE_PX = 2048
VAL_PX = 1024
ARCHITECTURE = DEMO_ARCHITECTURE  # smp Unet, timm ResNet-10-T encoder, depth 4
SETTINGS = TrainConfig(
    architecture=ARCHITECTURE,
    max_steps=600,
    steps_per_epoch=100,
    batch_size=8,
    patch_px=256,
    lr=2e-3,
    seed=0,
    num_workers=1,
    name=NAME,
    description="demo: buildings and roads at 0.5 m, trained on synthetic cities only",
    dtype="float16",
    precision="32",  # the bundled weights were trained in float32
    data_notes=[
        f"terraseg.synthetic.make_city(size_px={SCENE_PX}, seed={s}, gsd_m=0.5) (training)"
        for s in TRAIN_SEEDS
    ]
    + [f"terraseg.synthetic.make_city(size_px={VAL_PX}, seed={VAL_SEED}, gsd_m=0.5) (validation)"],
)


def make_scenes(
    workdir: Path, plan: Sequence[tuple[str, int, int]] | None = None
) -> dict[str, list[Path]]:
    """Generate (or reuse) the scenes of ``plan``: ``(role, seed, size_px)`` at 0.5 m.

    The default plan is this model's: training, validation and evaluation scenes.
    """
    out: dict[str, list[Path]] = {"train": [], "val": [], "eval": []}
    if plan is None:
        plan = [("train", s, SCENE_PX) for s in TRAIN_SEEDS]
        plan += [("val", VAL_SEED, VAL_PX), ("eval", EVAL_SEED, SCENE_PX)]
    for role, seed, size in plan:
        path = workdir / f"{role}{seed}.tif"
        if not path.with_name(f"{path.stem}.truth.tif").exists():
            make_city(path, size_px=size, seed=seed, gsd_m=0.5, overwrite=True)
        out[role].append(path)
    return out


def train_on_scenes(
    scenes: dict[str, list[Path]], stem: Path, settings: TrainConfig, module: str, *,
    max_steps: int | None,
) -> None:
    """Train ``stem`` on the ``train`` scenes, validated on the ``val`` scenes (truth GeoPackages).

    The card records ``python -m <module>`` (plus ``--max-steps`` when it differs).
    """
    command = f"python -m {module}"
    if max_steps != settings.max_steps:
        command += f" --max-steps {max_steps}"
    train_semantic(
        scenes["train"],
        [p.with_name(f"{p.stem}.truth.gpkg") for p in scenes["train"]],
        stem,
        settings,
        val_image=scenes["val"],
        val_labels=[p.with_name(f"{p.stem}.truth.gpkg") for p in scenes["val"]],
        overwrite=True,
        max_steps=max_steps,
        command=command,
    )


def pixel_iou(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> list[float]:
    """IoU per class of two label arrays (255 in ``pred`` = nodata, never a match).

    Examples
    --------
    >>> pixel_iou(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    [1.0, 0.5, 0.5]
    """
    keep = truth < n_classes
    t, p = truth[keep], pred[keep]
    ious = []
    for k in range(n_classes):
        union = np.count_nonzero((t == k) | (p == k))
        inter = int(np.count_nonzero((t == k) & (p == k)))
        ious.append(inter / int(union) if union else float("nan"))
    return ious


def evaluate(weights: Path, scene: Path, workdir: Path) -> tuple[dict[str, float], float]:
    """Predict ``scene`` with the model and compare ``classes.tif`` to its truth raster."""
    net, card = load_model(weights)
    predictor = TilePredictor(net, device="cpu", batch_size=4, activation=card.activation)
    t0 = time.perf_counter()
    result = predict_scene(
        scene, predictor, card.to_spec(), workdir / f"pred-{scene.stem}", tile_px=512,
        overlap_px=64, chunk_px=2048, overwrite=True,
    )
    seconds = time.perf_counter() - t0
    with rasterio.open(result.classes_path) as p, rasterio.open(
        scene.with_name(f"{scene.stem}.truth.tif")
    ) as t:
        ious = pixel_iou(p.read(1), t.read(1), card.n_classes)
    metrics = {
        f"eval_iou_{c.name}": round(float(v), 4) for c, v in zip(card.classes, ious, strict=True)
    }
    metrics["eval_miou"] = round(float(np.mean(ious)), 4)
    return metrics, seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep scenes here.")
    parser.add_argument(
        "--out", type=Path, default=BUNDLED, help="Folder for weights and card."
    )
    parser.add_argument("--max-steps", type=int, default=SETTINGS.max_steps)
    parser.add_argument("--eval-only", action="store_true", help="Only re-measure eval_*.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="terraseg-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        scenes = make_scenes(workdir)
        stem = args.out / NAME
        if not args.eval_only:
            train_on_scenes(scenes, stem, SETTINGS, "terraseg.recipes.demo_semantic",
                            max_steps=args.max_steps)
        metrics, seconds = evaluate(stem.with_suffix(".safetensors"), scenes["eval"][0], workdir)
        card_path = stem.with_name(f"{NAME}.card.yaml")
        card = load_card(card_path)
        evaluation = (card.evaluation or "").split("; eval_*:")[0]
        card = card.model_copy(
            update={
                "metrics": {**card.metrics, **metrics},
                "evaluation": f"{evaluation}; eval_*: pixel IoU of predict_scene (tile 512, "
                f"overlap 64, cosine blending) against the truth raster of a synthetic "
                f"{SCENE_PX}x{SCENE_PX}-px scene with seed {EVAL_SEED}, not used in training or "
                f"validation ({seconds:.0f} s to predict on the CPU)",
            }
        )
        save_card(card, card_path, overwrite=True)
        seconds_trained = card.training.seconds if card.training else None
        print(f"{card_path}: {card.metrics}; trained in {seconds_trained} s")


if __name__ == "__main__":
    main()
