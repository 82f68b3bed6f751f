"""Bundled models side by side: speed and building scores, measured in one run.

For each model (default: demo-semantic, demo-instance and demo-maskrcnn) on the same unseen
synthetic scene (``make_city`` seed 21, 2048² at 0.5 m; seed 7 is the demo
scene, 11-15 trained the models): ``terraseg predict`` (class raster and
probabilities) → instances → vectors → ``terraseg evaluate``, timed, then the
same with a second chunk size to show that chunking does not change the
polygons (count, and the largest Hausdorff distance between matched polygons,
in pixels). Terraces: of the true buildings that share a wall with another
(closer than one pixel), the share matched one-to-one at IoU >= 0.5, and the
predicted polygons that cover most of two or more of them (merged terraces).

Prints one human line per model, the speed ratios against the first model, and one JSON
line.

Usage::

    python benchmarks/models.py                         # ~3 min on 2 cores
    python benchmarks/models.py --models demo-instance --chunks 512 2048 --seed 21
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from terraseg.core.match import match_polygons
from terraseg.recipes.evaluation import evaluate_buildings
from terraseg.synthetic import make_city


def compare_polygons(a: Path, b: Path, gsd_m: float) -> dict[str, Any]:
    """Counts and the worst geometric difference of two runs' buildings (pixels)."""
    pa = gpd.read_file(a, layer="buildings").geometry.to_numpy()
    pb = gpd.read_file(b, layer="buildings").geometry.to_numpy()
    m = match_polygons(pa, pb, iou_threshold=0.5)
    hd = shapely.hausdorff_distance(pa[m.pred_index], pb[m.truth_index]) if len(m.iou) else []
    return {
        "n_a": len(pa), "n_b": len(pb), "matched": int(len(m.iou)),
        "min_iou": float(m.iou.min()) if len(m.iou) else None,
        "max_hausdorff_px": float(np.max(hd) / gsd_m) if len(hd) else 0.0,
    }


def terraces(pred: Path, truth: Path, gsd_m: float) -> dict[str, Any]:
    """How a model splits touching buildings (terraces, semi-detached houses)."""
    p = gpd.read_file(pred, layer="buildings").geometry.to_numpy()
    t = gpd.read_file(truth, layer="buildings").geometry.to_numpy()
    a, b = shapely.STRtree(t).query(t, predicate="dwithin", distance=gsd_m)
    touching = np.unique(a[a != b])
    tt = t[touching]
    m = match_polygons(p, tt, iou_threshold=0.5)
    pi, ti = shapely.STRtree(tt).query(p, predicate="intersects")
    covered = shapely.area(shapely.intersection(p[pi], tt[ti])) >= 0.5 * shapely.area(tt[ti])
    per_pred = np.bincount(pi[covered], minlength=len(p))
    return {"touching_truth": int(len(tt)), "touching_matched": int(len(m.iou)),
            "touching_recall": round(len(m.iou) / len(tt), 4) if len(tt) else None,
            "merged_polygons": int((per_pred >= 2).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+",
                    default=["demo-semantic", "demo-instance", "demo-maskrcnn"],
                    help="Bundled names or checkpoints; speed ratios are against the first.")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--size-px", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs=2, default=[2048, 512],
                    help="Chunk size of the timed run, then of the comparison run.")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="terraseg-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene = work / f"city{args.seed}.tif"
        if not scene.with_name(f"{scene.stem}.truth.gpkg").exists():
            make_city(scene, size_px=args.size_px, seed=args.seed, gsd_m=0.5, overwrite=True)
        out: dict[str, Any] = {"benchmark": "models", "scene": f"make_city seed {args.seed}, "
                               f"{args.size_px}² at 0.5 m", "models": {}}
        for model in args.models:
            runs = {}
            for chunk_px in args.chunks:
                sub = work / f"c{chunk_px}"
                sub.mkdir(exist_ok=True)
                metrics, _ = evaluate_buildings(model, scene, sub, chunk_px=chunk_px)
                runs[chunk_px] = metrics
            first, second = args.chunks
            same = compare_polygons(
                work / f"c{first}" / f"eval-{model}-{scene.stem}" / f"{scene.stem}.gpkg",
                work / f"c{second}" / f"eval-{model}-{scene.stem}" / f"{scene.stem}.gpkg",
                gsd_m=0.5,
            )
            res = runs[first] | {f"chunk_{first}_vs_{second}": same, "terraces": terraces(
                work / f"c{first}" / f"eval-{model}-{scene.stem}" / f"{scene.stem}.gpkg",
                scene.with_name(f"{scene.stem}.truth.gpkg"), gsd_m=0.5)}
            out["models"][model] = res
            print(
                f"{model}: building F1@0.5 {res.get('eval_building_f1')}, mean IoU "
                f"{res.get('eval_building_mean_iou')}, AP {res.get('eval_building_ap')}, count "
                f"ratio {res.get('eval_building_count_ratio')}, building pixel IoU "
                f"{res.get('eval_iou_building')}, road F1 {res.get('eval_road_f1')}; "
                f"{res['eval_mpx_s']} Mpx/s end to end ({res['eval_predict_mpx_s']} predict); "
                f"chunk {first} vs {second}: {same}; terraces: {res['terraces']}",
                file=sys.stderr,
            )
        base = args.models[0]
        a = out["models"][base]
        out["speed_ratio"] = {}
        for other in args.models[1:]:
            b = out["models"][other]
            out["speed_ratio"][f"{other}/{base}_end_to_end"] = round(
                b["eval_mpx_s"] / a["eval_mpx_s"], 3)
            out["speed_ratio"][f"{other}/{base}_predict"] = round(
                b["eval_predict_mpx_s"] / a["eval_predict_mpx_s"], 3)
        if out["speed_ratio"]:
            print(f"speed ratio: {out['speed_ratio']}", file=sys.stderr)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
