"""Reproduce the bundled Mask R-CNN building detector ``demo-maskrcnn``.

Writes ``demo-maskrcnn.safetensors`` and ``demo-maskrcnn.card.yaml`` into the
bundled folder ``terraseg/models/bundled`` (or ``--out``). Run from a checkout::

    python -m terraseg.recipes.demo_maskrcnn            # train + evaluate
    python -m terraseg.recipes.demo_maskrcnn --eval-only

What it does, all with this project's own code and nothing downloaded:

1. generates the synthetic cities of ``demo-instance`` (0.5 m, 2048² px):
   training seeds 11, 12, 13, 15, 16, 17, 18 and the evaluation seed 21, used
   neither for training nor for choosing settings;
2. trains :func:`terraseg.models.detector.build_maskrcnn` (MobileNetV3-Large +
   FPN from stride 4, random weights) with
   :func:`terraseg.models.train_detection.train_detection`, the equivalent of::

       terraseg train train11.tif train11.truth.gpkg --extra ... --task detection \\
           --max-steps 1200 --batch-size 2 --patch-px 256 --lr 0.002 --seed 0 --fp16

   The bundled weights are two such runs: stage 1 from random weights
   (``--out stage1``), then ``--continue-from stage1/demo-maskrcnn.safetensors
   --lr 0.001`` (``terraseg train --init-from``) for 1200 more steps; about 45
   minutes each on one CPU core. Stage 1 alone scored building F1@0.5 0.63 on the
   evaluation scene, both stages 0.85.

3. chooses the card's ``building_min_score`` and ``building_min_area_m2`` on the
   validation scene (seed 14)
   and predicts the evaluation scene through the engine (tile 512, overlap 64,
   chunk 2048: detections rendered as boundary-layout probabilities, blended,
   labelled, vectorized), storing building F1@0.5, mean IoU, AP and count ratio
   in the card, as ``demo-instance``'s recipe does.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from terraseg.config import TrainConfig
from terraseg.recipes.demo_instance import (
    EVAL_SEED,
    MORE_SEEDS,
    SCENE_PX,
    TRAIN_SEEDS,
    VAL_PX,
    VAL_SEED,
)
from terraseg.recipes.demo_semantic import BUNDLED, make_scenes, train_on_scenes

NAME = "demo-maskrcnn"
SEEDS = (*TRAIN_SEEDS, *MORE_SEEDS)
SETTINGS = TrainConfig(
    task="detection",
    max_steps=1200,
    steps_per_epoch=100,
    batch_size=2,
    patch_px=256,
    lr=2e-3,
    seed=0,
    name=NAME,
    description="demo: Mask R-CNN building detector (MobileNetV3-Large FPN) at 0.5 m, trained "
    "on synthetic cities only",
    dtype="float16",
    progress=True,
    data_notes=[
        f"terraseg.synthetic.make_city(size_px={SCENE_PX}, seed={s}, gsd_m=0.5) (training)"
        for s in SEEDS
    ],
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep scenes here.")
    parser.add_argument("--out", type=Path, default=BUNDLED, help="Folder for weights and card.")
    parser.add_argument("--max-steps", type=int, default=SETTINGS.max_steps)
    parser.add_argument("--continue-from", default=None,
                        help="Continue training this model (e.g. an earlier run's result) "
                        "instead of starting from random weights.")
    parser.add_argument("--lr", type=float, default=SETTINGS.lr,
                        help="Peak learning rate of the one-cycle schedule.")
    parser.add_argument("--eval-only", action="store_true", help="Only re-measure eval_*.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="terraseg-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        plan = [("train", s, SCENE_PX) for s in SEEDS]
        plan += [("val", VAL_SEED, VAL_PX), ("eval", EVAL_SEED, SCENE_PX)]
        scenes = make_scenes(workdir, plan)
        stem = args.out / NAME
        if not args.eval_only:
            module = "terraseg.recipes.demo_maskrcnn"
            if args.continue_from:
                module += f" --continue-from {args.continue_from}"
            if args.lr != SETTINGS.lr:
                module += f" --lr {args.lr:g}"
            settings = SETTINGS.model_copy(update={"init_from": args.continue_from,
                                                  "lr": args.lr})
            train_on_scenes(scenes, stem, settings, module, max_steps=args.max_steps)
        from terraseg.recipes.evaluation import record_figures

        record_figures(stem, scenes["val"][0], scenes["eval"][0], workdir)


if __name__ == "__main__":
    main()
