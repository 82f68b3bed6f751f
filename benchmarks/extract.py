"""``terraseg extract``: IoU with the truth and seconds per answer at random truth buildings.

On a synthetic city of an unseen seed (default 21, 8192² px at 0.5 m; made with
:func:`terraseg.synthetic.make_city` unless ``--scene`` names one already made),
``--n`` truth buildings are drawn at random (``--sample-seed``); each is clicked
at its representative point (a point inside it) and extracted through the
notebook API, ``terraseg.extract(path, point=...)``:

- with the default instance model (``demo-instance``) and with ``model=None``
  (the colour region): mean and median IoU of the answer with the truth polygon,
  how many answers came from each method;
- seconds per answer (median, max) with the model already loaded (the API keeps
  it), and the first call's model load apart; the first answer after the load
  is also reported apart (its forward pass sets up the CPU kernels);
- one ``terraseg extract`` command, timed from the shell (Python start and
  imports included).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/extract.py --size-px 8192 --seed 21 --n 50
    python benchmarks/extract.py --scene /tmp/city21.tif --n 50   # a scene made before
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

import terraseg
from terraseg.engine.extract import load_extractor
from terraseg.synthetic import make_city

HERE = Path(__file__).resolve().parent


def _iou(a: Any, b: Any) -> float:
    inter = shapely.area(shapely.intersection(a, b))
    return float(inter / (a.area + b.area - inter))


def _measure(scene: Path, clicks: list[Any], truth: list[Any], model: str | None) -> dict[str, Any]:
    ious, seconds, methods = [], [], []
    for (x, y), geom in zip(clicks, truth, strict=True):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an ObjectCutWarning is scored like any answer
            obj = terraseg.extract(scene, point=(x, y), model=model)
        seconds.append(time.perf_counter() - t0)
        ious.append(_iou(obj.geometry.iloc[0], geom))
        methods.append(str(obj["method"].iloc[0]))
    return {
        "mean_iou": round(float(np.mean(ious)), 4),
        "median_iou": round(float(np.median(ious)), 4),
        "share_iou_ge_0.5": round(float(np.mean(np.asarray(ious) >= 0.5)), 3),
        "seconds_median": round(float(np.median(seconds)), 3),
        "seconds_max": round(float(np.max(seconds)), 3),
        "seconds_first": round(seconds[0], 3),
        "seconds_max_after_first": round(float(np.max(seconds[1:])), 3),
        "seconds": [round(t, 3) for t in seconds],
        "methods": {m: methods.count(m) for m in sorted(set(methods))},
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    scene = args.scene
    if scene is None:
        scene = folder / f"city{args.seed}.tif"
        t0 = time.perf_counter()
        make_city(scene, size_px=args.size_px, seed=args.seed, gsd_m=0.5)
        print(f"made {scene} in {time.perf_counter() - t0:.0f} s", flush=True)
    sc = terraseg.open_scene(scene)
    buildings = gpd.read_file(scene.with_name(scene.stem + ".truth.gpkg"), layer="buildings")
    pick = np.random.default_rng(args.sample_seed).choice(len(buildings), args.n, replace=False)
    truth = [buildings.geometry.iloc[int(i)] for i in pick]
    clicks = [(p.x, p.y) for p in (g.representative_point() for g in truth)]
    out: dict[str, Any] = {
        "scene": {
            "shape": list(sc.shape),
            "seed": args.seed,
            "path": None if args.scene is None else str(scene),
            "gsd_m": round(sc.gsd_m, 3),
            "truth_buildings": len(buildings),
        },
        "n": args.n,
        "sample_seed": args.sample_seed,
        "truth_area_m2_median": round(float(np.median([g.area for g in truth])), 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "load_average_1min_start": round(os.getloadavg()[0], 2),
        "date": datetime.date.today().isoformat(),
    }
    t0 = time.perf_counter()
    load_extractor("demo-instance")
    out["model_load_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"model load {out['model_load_seconds']} s", flush=True)
    for label, model in (("instance", "demo-instance"), ("none", None)):
        row = _measure(scene, clicks, truth, model)
        out[label] = row
        print(label, json.dumps(row), flush=True)
    x, y = clicks[0]
    dest = folder / "obj.gpkg"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("terraseg")),
            "-q",
            "extract",
            str(scene),
            "--point",
            f"{x!r},{y!r}",
            "--out",
            str(dest),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    out["cli_seconds"] = round(time.perf_counter() - t0, 2)
    out["cli_ok"] = proc.returncode == 0
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(
        f"terraseg extract (one command, Python start included): {out['cli_seconds']} s, "
        f"{proc.stdout.strip() or proc.stderr.strip()}",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-px", type=int, default=8192)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument(
        "--scene", type=Path, help="A synthetic city of --seed already made (its truth beside it)."
    )
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=HERE / "extract.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="terraseg-extract-") as tmp:
        result = run(args, Path(tmp))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
