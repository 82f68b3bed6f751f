"""Throughput of the tiled inference engine vs the bare model, in one run.

Prints a human summary and one JSON line:
``{"pipeline_mpx_s", "model_only_mpx_s", "efficiency", "peak_rss_mb", ...}``.

``model_only`` pushes the same number of lattice tiles (same tile size, same
batch size, same device) through the model from memory, so ``efficiency`` is
the share of the model's own speed that the whole pipeline (read, normalise,
blend, write COG) keeps. Run ``python benchmarks/throughput.py --help``.

Usage::

    python benchmarks/throughput.py --size-px 4096 --model cheap
    python benchmarks/throughput.py --size-px 4096 --model unet-r18
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from terraseg.inference import TilePredictor
from terraseg.models.builtin import build_builtin
from terraseg.models.spec import ModelSpec
from terraseg.pipeline import plan_scene, predict_scene
from terraseg.scene import open_scene
from terraseg.synthetic import make_city

CACHE = Path(os.environ.get("TERRASEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "terraseg-bench"))


def build_model(name: str) -> tuple[torch.nn.Module, ModelSpec]:
    """``cheap`` (1×1 conv), ``identity``, or ``unet-r18`` (smp U-Net, resnet18, random init)."""
    if name == "unet-r18":
        import segmentation_models_pytorch as smp

        net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3)
        return net, ModelSpec(name="unet-r18")
    if name in ("cheap", "identity"):
        return build_builtin(name)
    from terraseg.models.loading import load_model

    net, card = load_model(name)  # bundled name (demo-semantic) or checkpoint path
    return net, card.to_spec()


def scene_for(size_px: int, seed: int = 0) -> Path:
    path = CACHE / f"city_{size_px}_s{seed}.tif"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_city(path, size_px=size_px, seed=seed)
        print(f"made {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def model_only(predictor: TilePredictor, n_tiles: int, tile_px: int, n_bands: int) -> float:
    """Seconds to push ``n_tiles`` random tiles through the model from memory."""
    rng = np.random.default_rng(0)
    batch = rng.random((predictor.batch_size, n_bands, tile_px, tile_px), dtype=np.float32)
    n_batches = -(-n_tiles // predictor.batch_size)
    last = n_tiles - (n_batches - 1) * predictor.batch_size
    batches = [batch] * (n_batches - 1) + [batch[:last]]
    for _ in predictor.predict_stream(batches[:1]):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in predictor.predict_stream(batches):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-px", type=int, default=4096)
    ap.add_argument("--model", default="cheap",
                    help="cheap, identity, unet-r18 (random init), demo-semantic or a checkpoint")
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--overlap-px", type=int, default=64)
    ap.add_argument("--chunk-px", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--no-prefetch", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = scene_for(args.size_px)
    scene = open_scene(path)
    net, spec = build_model(args.model)
    predictor = TilePredictor(net, device=args.device, batch_size=args.batch_size,
                              activation=spec.activation)
    grid = plan_scene(scene, tile_px=args.tile_px, overlap_px=args.overlap_px,
                      chunk_px=args.chunk_px)
    # warm the model once so neither measurement pays first-call costs
    model_only(predictor, 1, args.tile_px, spec.input.n_bands)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = predict_scene(scene, predictor, spec, tmp, tile_px=args.tile_px,
                            overlap_px=args.overlap_px, chunk_px=args.chunk_px,
                            prefetch=not args.no_prefetch)
        pipeline_s = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model_s = model_only(predictor, res.stats["tiles_run"], args.tile_px, spec.input.n_bands)
    mpx = scene.shape[0] * scene.shape[1] / 1e6
    out = {
        "benchmark": "throughput",
        "size_px": args.size_px,
        "model": args.model,
        "tile_px": args.tile_px,
        "overlap_px": args.overlap_px,
        "chunk_px": args.chunk_px,
        "batch_size": args.batch_size,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "tiles": res.stats["tiles_run"],
        "lattice_tiles": grid.n_tiles,
        "pipeline_s": round(pipeline_s, 3),
        "model_only_s": round(model_s, 3),
        "pipeline_mpx_s": round(mpx / pipeline_s, 3),
        "model_only_mpx_s": round(mpx / model_s, 3),
        "efficiency": round(model_s / pipeline_s, 3),
        "stage_seconds": res.stats["seconds"],
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(f"{args.model} on {args.size_px}² ({out['tiles']} tiles, {out['device']}): "
          f"pipeline {out['pipeline_mpx_s']} Mpx/s, model only {out['model_only_mpx_s']} Mpx/s, "
          f"efficiency {out['efficiency']}, peak RSS {out['peak_rss_mb']} MB", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
