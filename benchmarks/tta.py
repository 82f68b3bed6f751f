"""Test-time augmentation (``--tta d4``): what it costs and what it gains, measured in one run.

On an unseen synthetic scene (``make_city`` seed 21, 1024² at 0.5 m; the bundled
models were trained on seeds 11-15), each model is run twice through
``terraseg predict`` → instances → vectors → ``terraseg evaluate``: without TTA
and with ``tta="d4"`` (the eight flips and rotations of every tile averaged
before blending). Prints one human line per model and run, and one JSON line
with the Mpx/s of the prediction (class raster and probabilities), its ratio
d4 / none, and building F1@0.5, mean IoU, count ratio and pixel IoU per class.

Usage::

    python benchmarks/tta.py                                   # ~4 min on 2 cores
    python benchmarks/tta.py --models demo-instance demo-semantic --size-px 2048
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from terraseg.api import predict_to_dir
from terraseg.engine.postprocess import vectorize_scene
from terraseg.evaluate.scores import evaluate
from terraseg.synthetic import make_city


def measure(model: str, scene: Path, out: Path, tta: str, device: str) -> dict[str, Any]:
    """Speed and scores of one run of ``model`` with ``tta`` on ``scene`` (with its truth)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = predict_to_dir(
        scene,
        out,
        model=model,
        device=device,
        tta=tta,
        write_probabilities=True,
        overwrite=True,
        show_progress=False,
    )
    predict_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    vectorize_scene(
        res.classes_path,
        out / "instances.tif",
        out,
        scene_name=scene.stem,
        probabilities_path=res.probabilities_path,
        overwrite=True,
    )
    vec = evaluate(
        out / f"{scene.stem}.gpkg", scene.with_name(f"{scene.stem}.truth.gpkg"), task="auto"
    )
    pix = evaluate(res.classes_path, scene.with_name(f"{scene.stem}.truth.tif"), task="pixels")
    mpx = res.stats["shape"][0] * res.stats["shape"][1] / 1e6
    row: dict[str, Any] = {
        "predict_s": predict_s,
        "predict_mpx_s": mpx / predict_s,
        "predict_cpu_s": cpu_s,
        "device": res.stats["machine"]["device"],
    }
    b = vec.buildings
    if b is not None:
        row.update(
            building_f1=b.f1,
            building_mean_iou=b.mean_iou,
            building_count_ratio=b.n_pred / b.n_truth if b.n_truth else None,
        )
    if pix.pixels is not None:
        names = {0: "background", 1: "building", 2: "road"}
        for value, scores in pix.pixels.per_class().items():
            row[f"iou_{names.get(value, f'class{value}')}"] = float(scores["iou"])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["demo-instance", "demo-semantic"])
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--size-px", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="terraseg-tta-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene = work / f"city{args.seed}_{args.size_px}.tif"
        if not scene.with_name(f"{scene.stem}.truth.gpkg").exists():
            make_city(scene, size_px=args.size_px, seed=args.seed, gsd_m=0.5, overwrite=True)
        out: dict[str, Any] = {
            "benchmark": "tta",
            "scene": f"make_city seed {args.seed}, {args.size_px}² at 0.5 m",
            "cpus": os.cpu_count(),
            "models": {},
        }
        warm = work / "warmup.tif"
        if not warm.exists():
            make_city(warm, size_px=256, seed=args.seed, gsd_m=0.5, overwrite=True)
        for model in args.models:
            for tta in ("none", "d4"):  # model load and first-call costs out of the timings
                measure(model, warm, work / f"warm-{model}-{tta}", tta, args.device)
            runs = {
                tta: measure(model, scene, work / f"{model}-{tta}", tta, args.device)
                for tta in ("none", "d4")
            }
            runs["d4_over_none_mpx_s"] = round(
                runs["d4"]["predict_mpx_s"] / runs["none"]["predict_mpx_s"], 3
            )
            # CPU seconds of this process: the cost under a shared machine's load
            runs["d4_over_none_cpu_s"] = round(
                runs["d4"]["predict_cpu_s"] / runs["none"]["predict_cpu_s"], 3
            )
            out["models"][model] = runs
            for tta in ("none", "d4"):
                r = runs[tta]
                print(
                    f"{model} tta={tta}: {r['predict_mpx_s']} Mpx/s predict on {r['device']}; "
                    f"building F1@0.5 {r.get('building_f1')}, mean IoU "
                    f"{r.get('building_mean_iou')}, count ratio "
                    f"{r.get('building_count_ratio')}, pixel IoU building "
                    f"{r.get('iou_building')}, road {r.get('iou_road')}",
                    file=sys.stderr,
                )
            print(
                f"{model}: d4 runs at {runs['d4_over_none_mpx_s']}x the Mpx/s of none "
                f"and takes {runs['d4_over_none_cpu_s']}x its CPU time",
                file=sys.stderr,
            )
        print(json.dumps(out))


if __name__ == "__main__":
    main()
