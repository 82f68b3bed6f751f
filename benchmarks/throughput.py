"""Throughput of the tiled inference engine vs the bare model, in one run.

Prints a human summary and one JSON line:
``{"pipeline_mpx_s", "model_only_mpx_s", "efficiency", "peak_rss_mb", ...}``.

``model_only`` pushes the same number of lattice tiles (same tile size, same
batch size, same device) through the model from memory, so ``efficiency`` is
the share of the model's own speed that the whole pipeline (read, normalise,
blend, write COG) keeps. Run ``python benchmarks/throughput.py --help``.

Scenes up to ``--base-px`` (4096) are synthetic cities made once and cached;
larger ones are VRT mosaics of ``k x k`` copies of the cached base city (no
generation time, no disk; GDAL reads the copies window by window), so a
32768² run needs no 3 GB input file. Per-stage rates are scene Mpx divided by
the seconds spent in that stage (read and normalise run in a thread that
overlaps the model, so stage seconds add up to more than the wall time).

Usage::

    python benchmarks/throughput.py --size-px 4096 --model cheap
    python benchmarks/throughput.py --size-px 4096 --model unet-r18
    python benchmarks/throughput.py --size-px 32768 --model cheap --skip-model-only
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
import rasterio
import torch

from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import plan_scene, predict_scene
from terraseg.io.scene import open_scene
from terraseg.models.builtin import build_builtin
from terraseg.models.spec import ModelSpec
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


def scene_for(size_px: int, seed: int = 0, base_px: int = 4096) -> Path:
    """A cached synthetic city of ``size_px``², or a VRT mosaic of copies of one."""
    if size_px > base_px:
        if size_px % base_px:
            raise SystemExit(f"--size-px above {base_px} must be a multiple of it")
        return mosaic_vrt(scene_for(base_px, seed, base_px), size_px // base_px)
    path = CACHE / f"city_{size_px}_s{seed}.tif"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_city(path, size_px=size_px, seed=seed)
        print(f"made {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def mosaic_vrt(base: Path, k: int) -> Path:
    """A GDAL VRT of ``k x k`` copies of ``base``, same CRS, origin and pixel size."""
    path = base.with_name(f"{base.stem}_x{k}.vrt")
    with rasterio.open(base) as ds:
        h, w, dtype, crs, t = ds.height, ds.width, ds.dtypes[0], ds.crs.to_wkt(), ds.transform
        bx, by = ds.block_shapes[0][1], ds.block_shapes[0][0]
        count, interp = ds.count, [c.name.capitalize() for c in ds.colorinterp]
    geo = f"{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}"
    dtype_name = {"uint8": "Byte", "uint16": "UInt16"}.get(dtype, dtype.capitalize())
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">{base.name}</SourceFilename>"
            f"<SourceBand>{b}</SourceBand>"
            f"<SourceProperties RasterXSize=\"{w}\" RasterYSize=\"{h}\" DataType=\"{dtype_name}\""
            f" BlockXSize=\"{bx}\" BlockYSize=\"{by}\"/>"
            f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>"
            f"<DstRect xOff=\"{j * w}\" yOff=\"{i * h}\" xSize=\"{w}\" ySize=\"{h}\"/>"
            "</SimpleSource>"
            for i in range(k)
            for j in range(k)
        )
        bands.append(
            f"<VRTRasterBand dataType=\"{dtype_name}\" band=\"{b}\">"
            f"<ColorInterp>{interp[b - 1]}</ColorInterp>{sources}</VRTRasterBand>"
        )
    crs_xml = crs.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    path.write_text(
        f"<VRTDataset rasterXSize=\"{w * k}\" rasterYSize=\"{h * k}\">"
        f"<SRS>{crs_xml}</SRS><GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>\n"
    )
    return path


def model_only(predictor: TilePredictor, n_tiles: int, tile_px: int, n_bands: int) -> float:
    """Seconds to push ``n_tiles`` random tiles through the model from memory."""
    rng = np.random.default_rng(0)
    batch = rng.random((predictor.batch_size, n_bands, tile_px, tile_px), dtype=np.float32)
    n_batches = -(-n_tiles // predictor.batch_size)
    last = n_tiles - (n_batches - 1) * predictor.batch_size
    batches = [batch] * (n_batches - 1) + [batch[:last]]
    for _ in predictor.predict_stream(batches[:1], reuse_buffers=True):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in predictor.predict_stream(batches, reuse_buffers=True):
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
    ap.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                    help="model execution backend (onnxruntime: CPU, needs terraseg[onnx])")
    ap.add_argument("--base-px", type=int, default=4096,
                    help="largest generated city; bigger scenes are VRT mosaics of it")
    ap.add_argument("--skip-model-only", action="store_true",
                    help="do not time the bare model (for memory runs on huge scenes)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = scene_for(args.size_px, base_px=args.base_px)
    scene = open_scene(path)
    net, spec = build_model(args.model)
    predictor = TilePredictor(net, device=args.device, batch_size=args.batch_size,
                              activation=spec.activation, backend=args.backend)
    grid = plan_scene(scene, tile_px=args.tile_px, overlap_px=args.overlap_px,
                      chunk_px=args.chunk_px)
    # warm the model with a full batch so neither measurement pays first-call costs
    # (oneDNN builds its kernels per input shape)
    model_only(predictor, args.batch_size, args.tile_px, spec.input.n_bands)
    n_tiles = plan_scene(scene, tile_px=args.tile_px, overlap_px=args.overlap_px,
                         chunk_px=args.chunk_px).n_tiles
    # the bare model is timed before and after the pipeline and the faster time is
    # kept: one pass after a big run was 20 % slower (allocator state), which made
    # the efficiency look better than it is
    before = (
        None if args.skip_model_only
        else model_only(predictor, n_tiles, args.tile_px, spec.input.n_bands)
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = predict_scene(scene, predictor, spec, tmp, tile_px=args.tile_px,
                            overlap_px=args.overlap_px, chunk_px=args.chunk_px,
                            prefetch=not args.no_prefetch)
        pipeline_s = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model_s = None
    if before is not None:
        model_s = model_only(predictor, res.stats["tiles_run"], args.tile_px, spec.input.n_bands)
        if res.stats["tiles_run"] == n_tiles:  # the same work both times
            model_s = min(model_s, before)
    mpx = scene.shape[0] * scene.shape[1] / 1e6
    gsd_m = abs(scene.transform.a)
    stage_s = {k: v for k, v in res.stats["seconds"].items() if k != "wall"}
    out = {
        "benchmark": "throughput",
        "size_px": args.size_px,
        "model": args.model,
        "tile_px": args.tile_px,
        "overlap_px": args.overlap_px,
        "chunk_px": args.chunk_px,
        "batch_size": args.batch_size,
        "device": str(predictor.device),
        "backend": args.backend,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "tiles": res.stats["tiles_run"],
        "lattice_tiles": grid.n_tiles,
        "pipeline_s": round(pipeline_s, 3),
        "model_only_s": None if model_s is None else round(model_s, 3),
        "pipeline_mpx_s": round(mpx / pipeline_s, 3),
        "model_only_mpx_s": None if model_s is None else round(mpx / model_s, 3),
        "efficiency": None if model_s is None else round(model_s / pipeline_s, 3),
        "gsd_m": gsd_m,
        "pipeline_km2_h": round(mpx / pipeline_s * gsd_m**2 * 3600, 2),
        "stage_seconds": res.stats["seconds"],
        "stage_mpx_s": {k: round(mpx / v, 2) if v > 0 else None for k, v in stage_s.items()},
        "peak_rss_mb": round(peak_rss_mb, 1),
        "scene": path.name,
    }
    print(f"{args.model} on {args.size_px}² ({out['tiles']} tiles, {out['device']}): "
          f"pipeline {out['pipeline_mpx_s']} Mpx/s, model only {out['model_only_mpx_s']} Mpx/s, "
          f"efficiency {out['efficiency']}, peak RSS {out['peak_rss_mb']} MB", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
