"""Model execution backends on this machine: eager NCHW, channels_last, torch.compile, ONNX Runtime.

The engine keeps a faster backend only where it is measured faster *and* its
outputs equal the eager model's within tolerance. This script measures both for
one model and batch: seconds per batch (median of ``--repeats``, the backends
interleaved so load changes hit them alike), speed-up against eager NCHW, and
the largest absolute difference of the logits. Compile/export time is reported
separately. torch.compile needs a C++ compiler on the CPU; ONNX Runtime needs
``pip install onnxruntime onnx`` (not a terraseg dependency).

Usage::

    python benchmarks/backends.py --model unet-r18 --batch-size 8 --tile-px 512
    python benchmarks/backends.py --model cheap --backends eager channels_last onnxruntime
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_model  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]


def eager(net: torch.nn.Module, channels_last: bool) -> Runner:
    net = net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return net(t).contiguous().numpy()

    return run


def compiled(net: torch.nn.Module, example: np.ndarray) -> Runner:
    net = torch.compile(net.eval().to(memory_format=torch.channels_last), dynamic=False)
    run = eager(net, channels_last=True)  # type: ignore[arg-type]
    run(example)  # compile now, timed by the caller
    return run


def onnxruntime(net: torch.nn.Module, example: np.ndarray, threads: int) -> Runner:
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with torch.inference_mode():
        torch.onnx.export(net.eval(), (torch.from_numpy(example),), str(path),
                          input_names=["x"], output_names=["logits"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = sess.run(["logits"], {"x": x})[0]
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="unet-r18")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backends", nargs="+",
                    default=["eager", "channels_last", "compile", "onnxruntime"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, spec = build_model(args.model)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, spec.input.n_bands, args.tile_px, args.tile_px),
                   dtype=np.float32)

    runners: dict[str, Runner] = {}
    setup_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in args.backends:
        t0 = time.perf_counter()
        try:
            own = copy.deepcopy(net)  # the same weights for every backend
            if name == "eager":
                runners[name] = eager(own, channels_last=False)
            elif name == "channels_last":
                runners[name] = eager(own, channels_last=True)
            elif name == "compile":
                runners[name] = compiled(own, x)
            elif name == "onnxruntime":
                runners[name] = onnxruntime(own, x, args.threads)
            else:
                raise SystemExit(f"unknown backend {name}")
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            continue
        setup_s[name] = round(time.perf_counter() - t0, 2)
    reference = runners["eager"](x) if "eager" in runners else None
    for run in runners.values():
        run(x)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["eager"]) if "eager" in times else None
    rows = {}
    for name, run in runners.items():
        med = statistics.median(times[name])
        diff = None if reference is None else float(np.abs(run(x) - reference).max())
        rows[name] = {
            "s_per_batch": round(med, 4),
            "mpx_s": round(args.batch_size * args.tile_px**2 / 1e6 / med, 3),
            "speedup_vs_eager": None if base is None else round(base / med, 3),
            "max_abs_diff": diff,
            "setup_s": setup_s[name],
        }
        print(f"{name:14s} {med * 1e3:9.1f} ms/batch  ×{rows[name]['speedup_vs_eager']}  "
              f"max|Δ| {diff:.2e}  setup {setup_s[name]} s", file=sys.stderr)
    for name, err in errors.items():
        print(f"{name:14s} failed: {err}", file=sys.stderr)
    print(json.dumps({"benchmark": "backends", "model": args.model,
                      "batch_size": args.batch_size, "tile_px": args.tile_px,
                      "threads": args.threads, "cpus": os.cpu_count(),
                      "load_avg": round(os.getloadavg()[0], 2),
                      "results": rows, "errors": errors}))


if __name__ == "__main__":
    main()
