"""The whole benchmark suite: one table on the terminal, every figure in ``results.json``.

Runs each benchmark script of this folder in its own process (so each peak RSS
is its own) and collects the JSON line each prints:

* ``throughput.py`` with the ``cheap`` model (a 1×1 conv: the engine's own
  cost) from 2048² to 32768²: pipeline Mpx/s and km²/h, per-stage rates,
  efficiency against the bare model, peak RSS, and how peak RSS grows with
  scene size (scenes above 4096² are VRT mosaics of the cached 4096² city);
* ``throughput.py`` with the bundled ``demo-semantic`` model and a resnet18
  U-Net (random weights), at 2048²: efficiency with real models;
* ``vectorize.py``: buildings/s with regularization for ~10k and ~100k
  buildings, road km/s, peak RSS;
* ``instances.py``: instance-merge rate for ~10k and ~100k buildings;
* ``scaling.py`` (``--scaling``): a 2-scene workflow on one vs two Dask workers of a
  LocalCluster: speed-up, client CPU against the workers', bytes sent to the client.

Every row states the machine (CPU, cores, GPU or not) and the load average
when it started; quote ratios from one run, since shared machines are noisy.
The scripts run with the environment the ``terraseg`` command gives itself
(glibc's huge-page tunable, see ``terraseg.cli.hugepages``).

Usage::

    python benchmarks/suite.py                 # everything, about 10-15 min on 2 cores
    python benchmarks/suite.py --quick         # 2048² and 4096² only, ~10k buildings
    python benchmarks/suite.py --out /tmp/results.json --scaling
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and library versions of this machine."""
    import rasterio
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": mem_gib,
        "gpu": gpu,
        "summary": f"{cores} cores, {mem_gib} GiB, {gpu or 'no GPU'}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        # what the benchmarks run with: the terraseg command sets glibc's huge-page
        # tunable (terraseg.cli.hugepages), so the scripts get it too
        "glibc_tunables": child_env().get("GLIBC_TUNABLES"),
    }


def child_env() -> dict[str, str]:
    """The environment the ``terraseg`` command runs with (huge pages where it sets them)."""
    from terraseg.cli.hugepages import hugepage_env

    return hugepage_env() or dict(os.environ)


def run_script(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``benchmarks/<name>`` and return its last JSON line plus timing and load."""
    cmd = [sys.executable, str(HERE / name), *args]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    print(f"· {name} {' '.join(args)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=child_env())
    except subprocess.TimeoutExpired:
        return {"script": name, "args": args, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode not in (0, 1) or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"script": name, "args": args, "error": " | ".join(tail)}
    out: dict[str, Any] = json.loads(lines[-1])
    out.update(script=name, args=args, wall_s=round(time.perf_counter() - t0, 1),
               load_avg_start=round(load, 2))
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(results: dict[str, Any]) -> None:
    """Print the tables (rich when available)."""
    rows: list[tuple[str, list[list[str]], list[str]]] = []
    engine = [
        [r.get("model", "?"), f"{r.get('size_px', '?')}²", _fmt(r.get("pipeline_mpx_s")),
         _fmt(r.get("pipeline_km2_h"), 0), _fmt(r.get("model_only_mpx_s")),
         _fmt(r.get("efficiency"), 3), _fmt(r.get("peak_rss_mb"), 0), r.get("error", "")]
        for r in results["throughput"]
    ]
    rows.append(("Engine (Mpx/s)", engine, ["model", "scene", "pipeline", "km²/h", "model only",
                                            "efficiency", "peak RSS MB", "error"]))
    stages = [
        [r.get("model", "?"), f"{r.get('size_px', '?')}²",
         *(_fmt((r.get("stage_mpx_s") or {}).get(k)) for k in ("read", "infer", "blend", "write"))]
        for r in results["throughput"] if "error" not in r
    ]
    rows.append(("Engine stages (scene Mpx / seconds in the stage; read and write overlap "
                 "the model on their own threads)", stages,
                 ["model", "scene", "read", "infer", "blend", "write"]))
    g = results.get("memory_growth")
    if g:
        rows.append(("Engine memory growth (cheap)", [[
            f"{g['from_px']}² → {g['to_px']}²", f"×{g['pixels_x']:.0f}",
            f"×{g['peak_rss_x']:.2f}", _fmt(g["largest_peak_rss_mb"], 0)]],
            ["scenes", "pixels", "peak RSS", "largest peak MB"]))
    vec = [
        [r.get("what", "?"), "×".join(str(s) for s in r.get("scene_px", [])),
         _fmt(r.get("buildings")), _fmt(r.get("buildings_per_s"), 0),
         _fmt(r.get("polygons_km_per_s"), 1), _fmt(r.get("centerlines_km_per_s"), 1),
         _fmt(r.get("peak_rss_mb"), 0)]
        for r in (results.get("vectorize") or {}).get("runs", [])
    ]
    if vec:
        rows.append(("Vectorization", vec, ["what", "scene px", "buildings", "buildings/s",
                                            "road polygons km/s", "centerlines km/s",
                                            "peak RSS MB"]))
    inst = [
        [_fmt(r.get("buildings")), _fmt(r.get("merge_s")),
         _fmt(r["buildings"] / r["merge_s"] if r.get("merge_s") else None, 0),
         _fmt(r.get("peak_rss_mb"), 0), str(r.get("exact"))]
        for r in (results.get("instances") or {}).get("runs", [])
    ]
    if inst:
        rows.append(("Instance merge", inst,
                     ["buildings", "merge s", "buildings/s", "peak RSS MB", "exact"]))
    sc = results.get("scaling")
    if sc and "error" not in sc:
        rows.append(("Dask scaling (LocalCluster, whole workflow)", [[
            _fmt(sc.get("seconds_1w")), _fmt(sc.get("seconds_2w")), _fmt(sc.get("speedup_2w"), 3),
            _fmt(sc.get("client_cpu_fraction_2w"), 3),
            _fmt(sc.get("bytes_to_client_per_2048_chunk")),
            _fmt(sc.get("scheduler_overhead_ms_per_task"))]],
            ["1 worker s", "2 workers s", "speed-up", "client CPU / workers'",
             "bytes to client per 2048² chunk", "scheduler ms/task"]))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        for title, body, header in rows:
            print(f"\n{title}\n" + " | ".join(header))
            for row in body:
                print(" | ".join(row))
        return
    console = Console(width=max(Console().width, 110))
    console.print(f"[bold]Machine:[/bold] {results['machine']['summary']} "
                  f"({results['machine']['cpu']}), torch {results['machine']['torch']}")
    for title, body, header in rows:
        table = Table(title=title)
        for h in header:
            table.add_column(h)
        for row in body:
            table.add_row(*row)
        console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--quick", action="store_true", help="small sizes only (a few minutes)")
    ap.add_argument("--sizes", type=int, nargs="+", help="cheap-model scene sizes (pixels)")
    ap.add_argument("--scaling", action="store_true", help="also run scaling.py (LocalCluster)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    args = ap.parse_args()

    sizes = args.sizes or ([2048, 4096] if args.quick else [2048, 4096, 8192, 16384, 32768])
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "suite": "terraseg benchmarks",
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "throughput": [],
    }
    for size in sizes:
        results["throughput"].append(
            run_script("throughput.py", ["--size-px", str(size), "--model", "cheap"], args.timeout)
        )
    for model in ["demo-semantic", "unet-r18"]:
        results["throughput"].append(
            run_script("throughput.py", ["--size-px", "2048", "--model", model], args.timeout)
        )
    cheap = [r for r in results["throughput"] if r.get("model") == "cheap" and "error" not in r]
    if len(cheap) > 1:
        a, b = cheap[0], cheap[-1]
        results["memory_growth"] = {
            "from_px": a["size_px"],
            "to_px": b["size_px"],
            "pixels_x": (b["size_px"] / a["size_px"]) ** 2,
            "peak_rss_x": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
            "largest_peak_rss_mb": b["peak_rss_mb"],
        }
    results["vectorize"] = run_script(
        "vectorize.py", ["--tiles", "3"] if args.quick else [], args.timeout
    )
    results["instances"] = run_script(
        "instances.py", ["--buildings", "10000"] if args.quick else [], args.timeout
    )
    if args.scaling:
        results["scaling"] = run_script("scaling.py", [], args.timeout)
    results["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["load_avg_end"] = round(os.getloadavg()[0], 2)
    for row in results["throughput"]:
        row.setdefault("machine", results["machine"]["summary"])
    for key in ("vectorize", "instances", "scaling"):
        if key in results:
            results[key].setdefault("machine", results["machine"]["summary"])

    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, args.out)  # never a half-written results file
    print(f"wrote {args.out}", file=sys.stderr)
    print(json.dumps({"suite": "done", "out": str(args.out),
                      "errors": sum("error" in r for r in results["throughput"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
