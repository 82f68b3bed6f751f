"""Reproduce the bundled boundary model ``demo-instance`` (buildings as instances, and roads).

Writes ``demo-instance.safetensors`` and ``demo-instance.card.yaml`` into the
bundled folder ``terraseg/models/bundled`` (or ``--out``). Run from a checkout
(about 45 minutes on a 2-core CPU)::

    python -m terraseg.recipes.demo_instance            # train + evaluate
    python -m terraseg.recipes.demo_instance --eval-only

What it does, all with this project's own code and nothing downloaded:

1. generates synthetic cities (terraces, touching houses, shadows, trees over
   roofs) with :func:`terraseg.synthetic.make_city` at 0.5 m: training scenes
   with seeds 11, 12, 13, 15 (2048² px each), a validation scene with seed 14
   (1024² px) and an evaluation scene with seed 21 (2048² px), which is used
   neither for training nor for validation;
2. stage 1 trains a *boundary* model with :func:`terraseg.models.train.train_semantic`
   (``task="boundary"``: classes background, building, road, building edge; the
   edge is the 3-px band of each building next to another building, so touching
   buildings have separate interiors), loss cross-entropy (edge weighted 2x) + Dice,
   the equivalent of::

       terraseg train train11.tif train11.truth.gpkg --extra ... --val val14.tif,val14.truth.gpkg \\
           --task boundary --edge-px 3 --loss ce+dice --out demo-instance --max-steps 1200 \\
           --batch-size 8 --patch-px 256 --lr 0.002 --seed 0 --fp16 --class-weights 1,1,1,2

3. optionally (``--finetune-steps 900``; not part of the bundled model) stage 2
   fine-tunes stage 1's weights (``init_from``) at lr 0.001 on the training
   cities plus seeds 16, 17, 18 (``terraseg train --init-from``); ``--stage1
   PATH`` starts it from an existing stage-1 model such as the bundled one;
4. predicts the validation scene and stores in the card the
   ``building_min_score`` (0 or 0.50-0.95) and ``building_min_area_m2`` (4-30)
   with the best building F1@0.5 there: ``terraseg predict`` leaves out buildings
   whose score (mean building probability) is lower or that are smaller
   (:func:`terraseg.recipes.evaluation.choose_building_filters`);
5. predicts the evaluation scene through the engine (tile 512, overlap 64,
   chunk 2048), labels instances by seeded watershed, vectorizes, and stores
   building F1@0.5, mean IoU, count ratio and pixel IoU in the card.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from terraseg.config import TrainConfig
from terraseg.models.train import DEMO_ARCHITECTURE
from terraseg.recipes.demo_semantic import BUNDLED, make_scenes, train_on_scenes

NAME = "demo-instance"
TRAIN_SEEDS = (11, 12, 13, 15)
#: Stage 2 (fine-tuning) adds these cities to the stage-1 ones.
MORE_SEEDS = (16, 17, 18)
VAL_SEED = 14
EVAL_SEED = 21
SCENE_PX = 2048
VAL_PX = 1024
SETTINGS = TrainConfig(
    task="boundary",
    edge_px=3,
    loss="ce+dice",
    class_weights=[1.0, 1.0, 1.0, 2.0],
    architecture=DEMO_ARCHITECTURE,
    max_steps=1200,
    steps_per_epoch=100,
    batch_size=8,
    patch_px=256,
    lr=2e-3,
    seed=0,
    num_workers=1,
    name=NAME,
    description="demo: buildings as instances (interior + contact band) and roads at 0.5 m, "
    "trained on synthetic cities only",
    dtype="float16",
    precision="32",  # the bundled weights were trained in float32
    data_notes=[
        f"terraseg.synthetic.make_city(size_px={SCENE_PX}, seed={s}, gsd_m=0.5) (training)"
        for s in TRAIN_SEEDS
    ]
    + [f"terraseg.synthetic.make_city(size_px={VAL_PX}, seed={VAL_SEED}, gsd_m=0.5) (validation)"],
)


#: Stage 2: fine-tune stage 1's weights on more cities at a lower rate.
FINETUNE = SETTINGS.model_copy(
    update={
        "max_steps": 900,
        "lr": 1e-3,
        "seed": 1,
        "data_notes": [
            f"terraseg.synthetic.make_city(size_px={SCENE_PX}, seed={s}, gsd_m=0.5) (training)"
            for s in (*TRAIN_SEEDS, *MORE_SEEDS)
        ]
        + [f"terraseg.synthetic.make_city(size_px={VAL_PX}, seed={VAL_SEED}, gsd_m=0.5) "
           "(validation)"],
    }
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep scenes here.")
    parser.add_argument("--out", type=Path, default=BUNDLED, help="Folder for weights and card.")
    parser.add_argument("--max-steps", type=int, default=SETTINGS.max_steps,
                        help="Steps of stage 1 (from random weights).")
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="Steps of the optional stage 2 (fine-tuning on more cities, e.g. "
                        f"{FINETUNE.max_steps}); 0 (default, the bundled model) skips it.")
    parser.add_argument("--finetune-lr", type=float, default=FINETUNE.lr,
                        help="Peak learning rate of stage 2.")
    parser.add_argument("--finetune-monitor", default=FINETUNE.monitor,
                        help="Validation metric that picks stage 2's best checkpoint.")
    parser.add_argument("--stage1", type=Path, default=None,
                        help="Use this model as stage 1's result instead of training it.")
    parser.add_argument("--eval-only", action="store_true", help="Only re-measure eval_*.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="terraseg-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        plan = [("train", s, SCENE_PX) for s in TRAIN_SEEDS]
        plan += [("val", VAL_SEED, VAL_PX), ("eval", EVAL_SEED, SCENE_PX)]
        scenes = make_scenes(workdir, plan)
        stem = args.out / NAME
        if not args.eval_only:
            _train(args, scenes, stem, workdir)
        from terraseg.recipes.evaluation import record_figures

        record_figures(stem, scenes["val"][0], scenes["eval"][0], workdir)


def _train(args: argparse.Namespace, scenes: dict[str, list[Path]], stem: Path,
           workdir: Path) -> None:
    """Stage 1 (from random weights on TRAIN_SEEDS), then stage 2 (fine-tuning, + MORE_SEEDS)."""
    module = "terraseg.recipes.demo_instance"
    if args.finetune_steps == 0:
        train_on_scenes(scenes, stem, SETTINGS, module, max_steps=args.max_steps)
        return
    stage1 = args.stage1
    if stage1 is None:
        stage1 = workdir / f"{NAME}-stage1"
        train_on_scenes(scenes, stage1, SETTINGS, module, max_steps=args.max_steps)
        stage1 = stage1.with_suffix(".safetensors")
    more = make_scenes(workdir, [("train", s, SCENE_PX) for s in MORE_SEEDS])
    both = {**scenes, "train": [*scenes["train"], *more["train"]]}
    settings = FINETUNE.model_copy(update={"init_from": str(stage1), "lr": args.finetune_lr,
                                          "monitor": args.finetune_monitor})
    train_on_scenes(both, stem, settings, module, max_steps=args.finetune_steps)


if __name__ == "__main__":
    main()
