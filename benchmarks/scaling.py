"""Dask scaling of a whole batch run: 1 vs 2 workers, client CPU and bytes, scenes in flight.

Runs a workflow of ``--scenes`` synthetic scenes (``--size-px``², model ``cheap``
by default; stages predict + vectorize + export) through
``terraseg.engine.batch.run_workflow`` on a LocalCluster of 1 and then 2
single-threaded worker processes on 127.0.0.1, ``--repeat`` times each, alternated.
Workers are warmed first (model built, modules imported), so cluster start-up is
excluded. Measured in one run:

- wall seconds of each run and the speed-up of 2 workers over 1 (median 1-worker
  time over median 2-worker time; the figures of the median runs are reported);
- the client process's CPU seconds (for a LocalCluster that process also runs
  the scheduler) against the summed CPU seconds of the worker processes;
- bytes of task results the client received, per Mpx and per 2048² chunk;
- the scheduler's overhead per task (empty tasks);
- on paper: how many workers at 100 Mpx/s each one client could feed: a large scene
  costs 3 tasks a chunk, each costing the driver's measured CPU per task (its own
  thread) and the scheduler's measured overhead per task; the busier of the two
  saturates first. Also the client process's CPU per extra Mpx (the 2-worker run
  minus the same run on scenes of half the side), which on this machine is mostly
  the in-process scheduler's background work per second of a slow run.

``--memory`` instead measures the client's peak RSS at ``--size-px`` and at
``--memory-size`` (one scene each, 2 workers, ``--stages``), each in a fresh client
process, and prints their ratio.

    python benchmarks/scaling.py                     # 2 x 4096², cheap
    python benchmarks/scaling.py --memory --size-px 4096 --memory-size 32768
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from throughput import scene_for  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _noop(i: int) -> int:
    return i


def _warm(model: str) -> None:
    """Runs on each worker: build the model and import what the tasks use."""
    import terraseg.engine.postprocess  # noqa: F401
    import terraseg.engine.tasks  # noqa: F401
    from terraseg.engine.distributed import PredictorOptions, get_worker_predictor

    get_worker_predictor(PredictorOptions(model=model, device="cpu", batch_size=8))


def workflow(tmp: Path, scenes: list[Path], model: str, chunk_px: int, n_workers: int,
             stages: list[str]) -> Path:
    wf = {
        "version": 1, "name": "scaling",
        "inputs": {"paths": [str(s) for s in scenes]},
        "models": {"semantic": model},
        "tiling": {"tile_px": 512, "overlap_px": 64, "chunk_px": chunk_px},
        "inference": {"device": "cpu", "batch_size": 8},
        "stages": stages,
        "outputs": {"dir": str(tmp / "out"), "formats": ["gpkg"], "probabilities": True},
        "cluster": {"type": "local", "n_workers": n_workers, "threads_per_worker": 1},
    }
    path = tmp / "wf.yaml"
    path.write_text(yaml.safe_dump(wf))
    return path


def run_once(scenes: list[Path], model: str, chunk_px: int, n_workers: int,
             stages: list[str]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from terraseg.config import load_workflow
    from terraseg.engine.batch import run_workflow

    with tempfile.TemporaryDirectory() as tmp_, LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        tmp = Path(tmp_)
        wf = load_workflow(workflow(tmp, scenes, model, chunk_px, n_workers, stages))
        client.run(_warm, model)
        w0 = client.run(_cpu)
        c0 = _cpu()
        t0 = time.perf_counter()
        summary = run_workflow(wf, client=client, overwrite=True)
        wall = time.perf_counter() - t0
        c1 = _cpu()
        w1 = client.run(_cpu)
        out: dict[str, Any] = {
            "workers": n_workers, "seconds": wall, "client_cpu_s": c1 - c0,
            "worker_cpu_s": sum(w1[k] - w0[k] for k in w1),
            "bytes_received": summary.client.get("bytes_received", 0),
            "tasks": summary.client.get("tasks", 0),
            "driver_cpu_s": summary.client.get("driver_cpu_s", 0.0),
        }
        if n_workers == 2:
            t1 = time.perf_counter()
            client.gather(client.map(_noop, range(2000), pure=False))
            out["overhead_ms_per_task"] = (time.perf_counter() - t1) / 2000 * 1e3
        return out


def memory_child(size_px: int, model: str, chunk_px: int, stages: list[str]) -> None:
    """One run in this (fresh) process; prints the client's peak RSS."""
    scene = scene_for(size_px)
    res = run_once([scene], model, chunk_px, 2, stages)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size_px": size_px, "client_peak_rss_mb": round(peak, 1), **res}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-px", type=int, default=4096)
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--model", default="cheap")
    ap.add_argument("--chunk-px", type=int, default=2048)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-size", type=int, default=32768)
    ap.add_argument("--stages", default="predict,vectorize,export",
                    help="stages of the --memory runs, comma-separated")
    ap.add_argument("--repeat", type=int, default=3,
                    help="1-worker and 2-worker runs, alternated; the speed-up is the ratio "
                    "of their median times (this machine's timings vary by 10-20 %% run to run)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--gpu-mpx-s", type=float, default=100.0,
                    help="assumed Mpx/s of one GPU worker, for the paper estimate")
    args = ap.parse_args()
    if args.child:
        memory_child(args.child, args.model, args.chunk_px, args.stages.split(","))
        return
    if args.memory:
        runs = []
        for size in (args.size_px, args.memory_size):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(size), "--model", args.model,
                 "--chunk-px", str(args.chunk_px), "--stages", args.stages],
                capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{size}²: client peak RSS {runs[-1]['client_peak_rss_mb']} MB, "
                  f"{runs[-1]['seconds']:.1f} s", file=sys.stderr)
        ratio = runs[1]["client_peak_rss_mb"] / runs[0]["client_peak_rss_mb"]
        print(f"client peak RSS ratio {args.memory_size}² / {args.size_px}²: {ratio:.3f}",
              file=sys.stderr)
        print(json.dumps({"benchmark": "scaling-memory", "stages": args.stages, "runs": runs,
                          "client_rss_ratio": round(ratio, 3)}))
        return
    # distinct scenes (different seeds): no cache shared between the two
    scenes = [scene_for(args.size_px, seed=s) for s in range(args.scenes)]
    stages = ["predict", "vectorize", "export"]
    # alternated, so that a slow spell of a shared machine hits both counts alike
    tries: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(max(1, args.repeat)):
        for n in (1, 2):
            tries[n].append(run_once(scenes, args.model, args.chunk_px, n, stages))
    runs = {n: sorted(t, key=lambda r: r["seconds"])[len(t) // 2] for n, t in tries.items()}
    # the same on scenes of a quarter of the area: the client's CPU per extra Mpx (its fixed
    # costs, such as reading the workflow and opening the scenes, cancel out)
    half = args.size_px // 2
    small = run_once([scene_for(half, seed=s) for s in range(args.scenes)], args.model,
                     args.chunk_px, 2, stages)
    mpx = args.scenes * args.size_px**2 / 1e6
    one, two = runs[1], runs[2]
    chunks_2048 = mpx / (2048**2 / 1e6)
    client_s_per_mpx = max((two["client_cpu_s"] - small["client_cpu_s"])
                           / (mpx - args.scenes * half**2 / 1e6), 1e-9)
    out = {
        "benchmark": "scaling", "size_px": args.size_px, "scenes": args.scenes,
        "model": args.model, "chunk_px": args.chunk_px, "cpus": os.cpu_count(),
        "load_1min_at_start": round(os.getloadavg()[0], 2),
        "seconds_1w": round(one["seconds"], 3), "seconds_2w": round(two["seconds"], 3),
        "speedup_2w": round(one["seconds"] / two["seconds"], 3),
        "repeat": max(1, args.repeat),
        "seconds_1w_runs": [round(r["seconds"], 3) for r in tries[1]],
        "seconds_2w_runs": [round(r["seconds"], 3) for r in tries[2]],
        "speedup_2w_pairs": [round(a["seconds"] / b["seconds"], 3)
                             for a, b in zip(tries[1], tries[2], strict=True)],
        "client_cpu_s_2w": round(two["client_cpu_s"], 3),
        "worker_cpu_s_2w": round(two["worker_cpu_s"], 3),
        "client_cpu_fraction_2w": round(two["client_cpu_s"] / two["worker_cpu_s"], 4),
        "client_cpu_fraction_1w": round(one["client_cpu_s"] / one["worker_cpu_s"], 4),
        "bytes_to_client_per_mpx": round(two["bytes_received"] / mpx),
        "bytes_to_client_per_2048_chunk": round(two["bytes_received"] / chunks_2048),
        "tasks": two["tasks"],
        "scheduler_overhead_ms_per_task": round(two["overhead_ms_per_task"], 3),
        "client_cpu_s_small": round(small["client_cpu_s"], 3), "small_size_px": half,
        "driver_cpu_s_2w": round(two["driver_cpu_s"], 3),
        "driver_cpu_ms_per_task": round(1e3 * two["driver_cpu_s"] / max(two["tasks"], 1), 3),
        "tasks_per_2048_chunk": round(two["tasks"] / chunks_2048, 2),
        "client_cpu_s_per_mpx": round(client_s_per_mpx, 5),
    }
    # on paper: a large scene costs 3 tasks a chunk (chunk, core, vector); a worker at
    # gpu_mpx_s sends that many tasks a second, each costing the driver's CPU per task in
    # the client and the scheduler's per-task overhead; either one saturates its core
    for px in (2048, 4096):
        tasks_s = 3 * args.gpu_mpx_s / (px * px / 1e6)
        worst_ms = max(out["driver_cpu_ms_per_task"], out["scheduler_overhead_ms_per_task"])
        out[f"workers_one_client_feeds_chunk{px}"] = round(1e3 / (worst_ms * tasks_s), 1)
    print(f"{args.scenes} x {args.model} {args.size_px}², chunk {args.chunk_px}: 1 worker "
          f"{out['seconds_1w']} s, 2 workers {out['seconds_2w']} s (x{out['speedup_2w']}, "
          f"medians of {out['repeat']}; pairs {out['speedup_2w_pairs']}); "
          f"client CPU {out['client_cpu_s_2w']} s vs workers {out['worker_cpu_s_2w']} s "
          f"({100 * out['client_cpu_fraction_2w']:.1f} %); "
          f"{out['bytes_to_client_per_2048_chunk']} bytes to the client per 2048² chunk; "
          f"driver {out['driver_cpu_ms_per_task']} ms CPU per task, scheduler "
          f"{out['scheduler_overhead_ms_per_task']} ms per task: one client feeds "
          f"~{out['workers_one_client_feeds_chunk2048']} workers at {args.gpu_mpx_s:g} Mpx/s "
          f"with 2048² chunks, ~{out['workers_one_client_feeds_chunk4096']} with 4096²",
          file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
