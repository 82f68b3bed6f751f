"""terraseg against its peers: same weights, same scene, same tiling, side by side.

Runs one semantic-segmentation model (an smp resnet18 U-Net, random init with
``torch.manual_seed(0)``, its head's bias centred on the scene so that all three
classes occur; saved once as safetensors) over one synthetic GeoTIFF
with each tool in its own subprocess, so peak RSS is per tool:

- ``terraseg``: the terraseg engine (``predict_scene``: chunked read, cosine-blended
  tiles, streaming COG write), run with the terraseg venv's python;
- ``torchgeo``: a plain torchgeo loop (``RasterDataset`` + ``GridGeoSampler`` +
  ``DataLoader(collate_fn=stack_samples)``), softmax scores averaged into a
  full-scene array, argmax, written with rasterio;
- ``rastervision``: Raster Vision's own prediction path
  (``SemanticSegmentationLearner`` + ``predict_scene_ss``: a sliding-window
  dataset, smooth labels averaged into full-scene arrays, ``labels.save``).

Every runner reports wall seconds for the whole prediction (open → read → model →
stitch → write), model-only seconds (the same number of tiles, same batch size,
pushed from memory in the same process), Mpx/s for both, ``efficiency`` (model-only
seconds / wall seconds), tiles run, resident memory after set-up and peak RSS.
The classes of each peer are then compared pixel by pixel with terraseg's.

The peers live in a separate environment (see ``benchmarks/PEERS.md``); a tool
whose python lacks the package is reported as not installed. This script needs
only the standard library itself and is not part of ``make test``::

    python benchmarks/peers.py --size-px 1024 --out /tmp/peers.json
    python benchmarks/peers.py                      # 4096² scene → benchmarks/peers.json
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("TERRASEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "terraseg-bench"))
TOOLS = ("terraseg", "torchgeo", "rastervision")
PACKAGES = {"terraseg": "terraseg", "torchgeo": "torchgeo", "rastervision": "rastervision"}
INSTALL_HINT = {
    "terraseg": "make install (the repo's .venv), or pass --terraseg-python",
    "torchgeo": "pip install -r benchmarks/peers-requirements.txt into the peers venv "
    "(see benchmarks/PEERS.md), or pass --peers-python",
    "rastervision": "pip install -r benchmarks/peers-requirements.txt into the peers venv "
    "(see benchmarks/PEERS.md), or pass --peers-python",
}
N_CLASSES = 3


# --------------------------------------------------------------------------- helpers (any python)


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- worker side


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _build_net(weights: str | None) -> Any:
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=N_CLASSES)
    if weights is not None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(weights))
    return net.eval()


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Make (or reuse) the scene and the weights; runs in the terraseg python."""
    from safetensors.torch import save_file

    from terraseg.synthetic import make_city

    CACHE.mkdir(parents=True, exist_ok=True)
    scene = CACHE / f"city_{args.size_px}_s0.tif"
    if not scene.exists():
        t0 = time.perf_counter()
        make_city(scene, size_px=args.size_px, seed=0)
        print(f"made {scene} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.raw_init:
        weights = CACHE / "unet_r18_seed0.safetensors"
    else:
        weights = CACHE / f"unet_r18_seed0_centred_{args.size_px}.safetensors"
    if not weights.exists():
        net = _build_net(None)
        if not args.raw_init:
            _centre_head(net, scene, args.tile_px)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(weights))
    return {"scene": str(scene), "weights": str(weights)}


def _centre_head(net: Any, scene: Path, tile_px: int) -> None:
    """Shift the head's bias by minus the mean logit of each class on two tiles of ``scene``.

    A random-init U-Net gives one class almost everywhere (99.99 % of the pixels on the
    synthetic city), which makes "the classes agree" say nothing. Centring the logits
    (same architecture, same compute) spreads the argmax over all classes (about
    41/51/8 % on the 1024² city) while the argmax stays a function of the image.
    """
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    with rasterio.open(scene) as src:
        n = min(tile_px, src.height // 2, src.width // 2)
        tiles = [src.read((1, 2, 3), window=Window(off, off, n, n)) for off in (0, n)]
    x = torch.from_numpy(np.stack(tiles).astype(np.float32) / 255.0)
    with torch.inference_mode():
        mean = net(x).mean(dim=(0, 2, 3))
    with torch.no_grad():
        net.segmentation_head[0].bias -= mean


def _timed_model_only(
    forward: Any, n_tiles: int, batch_size: int, tile_px: int
) -> tuple[float, float]:
    """Wall and CPU seconds to push ``n_tiles`` random tiles through ``forward`` from memory."""
    import numpy as np

    rng = np.random.default_rng(0)
    batch = rng.random((batch_size, 3, tile_px, tile_px), dtype=np.float32)
    n_batches = -(-n_tiles // batch_size)
    last = n_tiles - (n_batches - 1) * batch_size
    batches = [batch] * (n_batches - 1) + [batch[:last]]
    forward(batches[:1])  # warm-up
    c0, t0 = _cpu_s(), time.perf_counter()
    forward(batches)
    return time.perf_counter() - t0, _cpu_s() - c0


def _torch_forward(net: Any) -> Any:
    """Plain forward + softmax over numpy batches (what the peers' loops do)."""
    import torch

    def run(batches: list[Any]) -> None:
        with torch.inference_mode():
            for b in batches:
                net(torch.from_numpy(b)).softmax(dim=1)

    return run


def _run_terraseg(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    import terraseg
    from terraseg.engine.inference import TilePredictor
    from terraseg.engine.pipeline import predict_scene
    from terraseg.io.scene import open_scene
    from terraseg.models.spec import ModelSpec

    net = _build_net(args.weights)
    spec = ModelSpec(name="unet-r18")
    predictor = TilePredictor(net, device="cpu", batch_size=args.batch_size,
                              activation=spec.activation)
    predictor.predict(np.zeros((1, 3, args.tile_px, args.tile_px), np.float32))  # warm-up
    rss_ready = _rss_mb()

    c0, t0 = _cpu_s(), time.perf_counter()
    scene = open_scene(args.scene)
    res = predict_scene(scene, predictor, spec, out_dir, tile_px=args.tile_px,
                        overlap_px=args.overlap_px, chunk_px=args.chunk_px, overwrite=True)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    peak = _peak_rss_mb()
    tiles = int(res.stats["tiles_run"])

    def forward(batches: list[Any]) -> None:
        for _ in predictor.predict_stream(batches):
            pass

    model_s, model_cpu = _timed_model_only(forward, tiles, args.batch_size, args.tile_px)
    return {
        "wall_s": wall, "model_only_s": model_s, "cpu_s": cpu, "model_only_cpu_s": model_cpu,
        "tiles": tiles, "rss_ready_mb": rss_ready,
        "peak_rss_mb": peak, "classes_tif": str(out_dir / "classes.tif"),
        "versions": {"terraseg": terraseg.__version__, "torch": torch.__version__,
                     "segmentation_models_pytorch": _version("segmentation-models-pytorch")},
        "notes": f"predict_scene chunk_px={args.chunk_px}, cosine ramp, channels_last, "
        "streaming COG",
    }


def _run_torchgeo(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import numpy as np
    import rasterio
    import torch
    import torchgeo
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    net = _build_net(args.weights)
    if args.channels_last_peers:
        net = net.to(memory_format=torch.channels_last)
    forward = _torch_forward(net)
    forward([np.zeros((1, 3, args.tile_px, args.tile_px), np.float32)])  # warm-up
    rss_ready = _rss_mb()

    c0, t0 = _cpu_s(), time.perf_counter()
    stride = args.tile_px - args.overlap_px
    ds = RasterDataset(paths=[args.scene])
    sampler = GridGeoSampler(ds, size=args.tile_px, stride=stride)
    loader = DataLoader(ds, sampler=sampler, batch_size=args.batch_size,
                        collate_fn=stack_samples, num_workers=0)
    with rasterio.open(args.scene) as src:
        profile = src.profile
        inv = ~src.transform
        height, width = src.height, src.width
    scores = np.zeros((N_CLASSES, height, width), np.float32)  # full-scene arrays
    hits = np.zeros((height, width), np.float32)
    tiles = 0
    with torch.inference_mode():
        for batch in loader:
            probs = net(batch["image"] / 255.0).softmax(dim=1).numpy()
            boxes = batch["bounds"] if "bounds" in batch else batch["bbox"]
            for prob, box in zip(probs, boxes, strict=True):
                if isinstance(box, tuple):  # torchgeo ≥ 0.8: (x slice, y slice, t slice)
                    xmin, ymax = box[0].start, box[1].stop
                else:  # torchgeo < 0.8: BoundingBox
                    xmin, ymax = box.minx, box.maxy
                col, row = (round(v) for v in inv * (xmin, ymax))
                # the lattice is anchored at the bottom-left corner, so tiles can hang
                # over the top (negative rows) or the right edge: clip to the scene
                ya, xa = max(row, 0), max(col, 0)
                yb = min(row + args.tile_px, height)
                xb = min(col + args.tile_px, width)
                scores[:, ya:yb, xa:xb] += prob[:, ya - row:yb - row, xa - col:xb - col]
                hits[ya:yb, xa:xb] += 1
                tiles += 1
    classes = (scores / hits).argmax(axis=0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=None, tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    path = out_dir / "classes.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    peak = _peak_rss_mb()
    del scores, hits, classes

    model_s, model_cpu = _timed_model_only(forward, tiles, args.batch_size, args.tile_px)
    return {
        "wall_s": wall, "model_only_s": model_s, "cpu_s": cpu, "model_only_cpu_s": model_cpu,
        "tiles": tiles, "rss_ready_mb": rss_ready,
        "peak_rss_mb": peak, "classes_tif": str(path),
        "versions": {"torchgeo": torchgeo.__version__, "torch": torch.__version__,
                     "segmentation_models_pytorch": _version("segmentation-models-pytorch")},
        "notes": "RasterDataset+GridGeoSampler, num_workers=0, mean of softmax in full-scene "
        "float32 arrays",
    }


def _run_rastervision(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import logging

    import numpy as np
    import torch
    from rastervision.core.data import (
        ClassConfig,
        RasterioSource,
        Scene,
        SemanticSegmentationLabelStore,
    )
    from rastervision.core.rv_pipeline import SemanticSegmentationPredictOptions
    from rastervision.pytorch_learner import (
        SemanticSegmentationGeoDataConfig,
        SemanticSegmentationLearner,
        SemanticSegmentationLearnerConfig,
        SolverConfig,
    )
    from rastervision.pytorch_learner.utils import predict_scene_ss

    logging.getLogger("rastervision").setLevel(logging.WARNING)
    net = _build_net(args.weights)
    if args.channels_last_peers:
        net = net.to(memory_format=torch.channels_last)
    class_config = ClassConfig(names=["background", "building", "road"],
                               colors=["black", "red", "yellow"],
                               null_class="background")
    learner_cfg = SemanticSegmentationLearnerConfig(
        data=SemanticSegmentationGeoDataConfig(class_config=class_config, img_sz=args.tile_px,
                                               num_workers=0),
        solver=SolverConfig(batch_sz=args.batch_size),
    )
    learner = SemanticSegmentationLearner(cfg=learner_cfg, model=net, training=False)
    learner.predict(torch.zeros(1, 3, args.tile_px, args.tile_px), raw_out=True)  # warm-up
    rss_ready = _rss_mb()

    c0, t0 = _cpu_s(), time.perf_counter()
    source = RasterioSource(args.scene, allow_streaming=True)
    store = SemanticSegmentationLabelStore(
        uri=str(out_dir), crs_transformer=source.crs_transformer, class_config=class_config,
        smooth_output=True)  # smooth: average the softmax scores of overlapping windows
    scene = Scene(id="scene", raster_source=source, label_store=store)
    options = SemanticSegmentationPredictOptions(
        chip_sz=args.tile_px, stride=args.tile_px - args.overlap_px, batch_sz=args.batch_size)
    counter = {"tiles": 0}
    predict = learner.predict

    def counting_predict(x: Any, *a: Any, **kw: Any) -> Any:
        counter["tiles"] += int(x.shape[0]) if x.ndim == 4 else 1
        return predict(x, *a, **kw)

    learner.predict = counting_predict  # type: ignore[method-assign]
    labels = predict_scene_ss(learner, scene, options)
    # write the class raster only (like terraseg's classes.tif), not the float scores
    labels.save(uri=str(out_dir), crs_transformer=source.crs_transformer,
                class_config=class_config, discrete_output=True, smooth_output=False)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    peak = _peak_rss_mb()
    learner.predict = predict  # type: ignore[method-assign]
    tiles = counter["tiles"]
    del labels

    forward = _torch_forward(net)
    forward([np.zeros((1, 3, args.tile_px, args.tile_px), np.float32)])
    model_s, model_cpu = _timed_model_only(forward, tiles, args.batch_size, args.tile_px)
    return {
        "wall_s": wall, "model_only_s": model_s, "cpu_s": cpu, "model_only_cpu_s": model_cpu,
        "tiles": tiles, "rss_ready_mb": rss_ready,
        "peak_rss_mb": peak, "classes_tif": str(out_dir / "labels.tif"),
        "versions": {"rastervision-pytorch-learner": _version("rastervision-pytorch-learner"),
                     "rastervision-core": _version("rastervision-core"),
                     "torch": torch.__version__,
                     "segmentation_models_pytorch": _version("segmentation-models-pytorch")},
        "notes": "predict_scene_ss (SlidingWindowGeoDataset, num_workers=0), smooth labels "
        "(float16 scores + hits, full scene), labels.save discrete only",
    }


RUNNERS = {"terraseg": _run_terraseg, "torchgeo": _run_torchgeo,
           "rastervision": _run_rastervision}


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    tool = args.worker
    try:
        __import__(PACKAGES[tool])
        import safetensors  # noqa: F401
        import segmentation_models_pytorch  # noqa: F401
    except ImportError as exc:
        return {"tool": tool, "status": "not installed", "error": repr(exc),
                "python": sys.executable, "install": INSTALL_HINT[tool]}
    _set_threads(args.threads)
    import torch

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = RUNNERS[tool](args, out_dir)
    mpx = _scene_mpx(args.scene)
    res.update(
        tool=tool, status="ok", python=sys.executable, torch_threads=torch.get_num_threads(),
        mpx=round(mpx, 3),
        wall_mpx_s=round(mpx / res["wall_s"], 3),
        model_only_mpx_s=round(mpx / res["model_only_s"], 3),
        efficiency=round(res["model_only_s"] / res["wall_s"], 3),
        wall_s=round(res["wall_s"], 2), model_only_s=round(res["model_only_s"], 2),
        cpu_s=round(res["cpu_s"], 2), model_only_cpu_s=round(res["model_only_cpu_s"], 2),
        cpu_s_per_mpx=round(res["cpu_s"] / mpx, 3),
        cpu_efficiency=round(res["model_only_cpu_s"] / res["cpu_s"], 3),
        rss_ready_mb=round(res["rss_ready_mb"], 1), peak_rss_mb=round(res["peak_rss_mb"], 1),
    )
    return res


def _scene_mpx(path: str) -> float:
    import rasterio

    with rasterio.open(path) as src:
        return src.width * src.height / 1e6


def _compare(args: argparse.Namespace) -> dict[str, Any]:
    """Share of pixels where ``other`` equals ``ref``; also outside the tile-overlap strips."""
    import numpy as np
    import rasterio

    with rasterio.open(args.compare[0]) as a, rasterio.open(args.compare[1]) as b:
        ref, other = a.read(1), b.read(1)
    if ref.shape != other.shape:
        return {"error": f"shapes differ: {ref.shape} vs {other.shape}"}
    same = ref == other
    stride = args.tile_px - args.overlap_px

    def in_overlap(n: int) -> Any:
        pos = np.arange(n)
        k = pos // stride  # tile whose stride cell holds pos
        # pixels covered by two tiles: the first overlap_px of every stride cell but the first
        return (k > 0) & (pos - k * stride < args.overlap_px) & (pos < n)

    band = in_overlap(ref.shape[0])[:, None] | in_overlap(ref.shape[1])[None, :]
    def shares(a: Any) -> list[float]:
        return [round(float(v), 4) for v in np.bincount(a.ravel(), minlength=N_CLASSES) / a.size]

    return {
        "class_shares_terraseg": shares(ref),
        "class_shares": shares(other),
        "agreement": round(float(same.mean()), 5),
        "agreement_outside_overlaps": round(float(same[~band].mean()), 5),
        "agreement_in_overlaps": round(float(same[band].mean()), 5) if band.any() else None,
    }


# --------------------------------------------------------------------------- driver side


def _call(python: str, argv: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run this script under ``python`` with ``argv``; stderr to ``log``; returns (rc, stdout)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.run([python, str(Path(__file__).resolve()), *argv], env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    return proc.returncode, proc.stdout


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _table(results: list[dict[str, Any]]) -> str:
    cols = [("tool", "tool"), ("status", "status"), ("tiles", "tiles"), ("wall_s", "wall s"),
            ("wall_mpx_s", "Mpx/s"), ("model_only_mpx_s", "model Mpx/s"),
            ("efficiency", "effic."), ("cpu_s_per_mpx", "CPU s/Mpx"),
            ("cpu_efficiency", "CPU effic."), ("speedup_vs_peer", "ts/peer"),
            ("rss_ready_mb", "RSS ready MB"), ("peak_rss_mb", "peak RSS MB"),
            ("agreement", "agree")]
    rows = [[h for _, h in cols]] + [[_fmt(r.get(k)) for k, _ in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _driver(args: argparse.Namespace) -> None:
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        sys.exit(f"unknown tool(s) {unknown}; choose from {','.join(TOOLS)}")
    work = CACHE / "peers"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    if not Path(args.terraseg_python).exists():
        sys.exit(f"terraseg python {args.terraseg_python} not found (it makes the scene and "
                 "the weights); pass --terraseg-python")
    prep_argv = ["--_prepare", "--size-px", str(args.size_px), "--tile-px", str(args.tile_px)]
    rc, out = _call(args.terraseg_python, prep_argv + (["--raw-init"] if args.raw_init else []),
                    env, work / "prepare.log")
    prep = _last_json(out) if rc == 0 else None
    if prep is None:
        sys.exit(f"preparing the scene/weights failed:\n{_tail(work / 'prepare.log')}")
    print(f"scene {prep['scene']}, weights {prep['weights']}", file=sys.stderr)

    load_before = _loadavg()
    common = ["--scene", prep["scene"], "--weights", prep["weights"], "--threads",
              str(args.threads), "--batch-size", str(args.batch_size), "--tile-px",
              str(args.tile_px), "--overlap-px", str(args.overlap_px), "--chunk-px",
              str(args.chunk_px)] + (["--channels-last-peers"] if args.channels_last_peers else [])
    results: list[dict[str, Any]] = []
    for tool in tools:
        python = args.terraseg_python if tool == "terraseg" else args.peers_python
        if not Path(python).exists():
            results.append({"tool": tool, "status": "not installed", "python": python,
                            "error": "python not found", "install": INSTALL_HINT[tool]})
            print(f"{tool}: not installed ({python} not found); {INSTALL_HINT[tool]}",
                  file=sys.stderr)
            continue
        print(f"running {tool} with {python} ...", file=sys.stderr)
        log = work / f"{tool}.log"
        t0, load0 = time.perf_counter(), _loadavg()
        rc, out = _call(python, ["--_worker", tool, "--out-dir", str(work / tool), *common],
                        env, log)
        res = _last_json(out) if rc == 0 else None
        if res is not None:
            res.update(loadavg_before=load0, loadavg_after=_loadavg())
        if res is None:
            res = {"tool": tool, "status": "failed", "python": python, "rc": rc,
                   "error": _tail(log)}
            print(f"{tool}: failed (rc {rc}), log {log}:\n{_tail(log)}", file=sys.stderr)
        elif res["status"] != "ok":
            print(f"{tool}: {res['status']} ({res.get('error')}); {res.get('install')}",
                  file=sys.stderr)
        else:
            print(f"{tool}: {res['wall_mpx_s']} Mpx/s, efficiency {res['efficiency']}, peak RSS "
                  f"{res['peak_rss_mb']} MB ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        results.append(res)
    load_after = _loadavg()

    ref = next((r for r in results if r["tool"] == "terraseg" and r["status"] == "ok"), None)
    for r in results:
        if r["status"] != "ok" or ref is None:
            continue
        if r is not ref:
            r["speedup_vs_peer"] = round(ref["wall_mpx_s"] / r["wall_mpx_s"], 3)
            rc, out = _call(args.terraseg_python,
                            ["--_compare", ref["classes_tif"], r["classes_tif"], "--tile-px",
                             str(args.tile_px), "--overlap-px", str(args.overlap_px)],
                            env, work / f"compare_{r['tool']}.log")
            r.update(_last_json(out) or {"agreement": None})
        else:
            r["agreement"] = 1.0

    summary = {
        "benchmark": "peers",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "size_px": args.size_px,
        "model": "smp.Unet(resnet18, encoder_weights=None, in_channels=3, classes=3), seed 0"
        + ("" if args.raw_init else ", head bias centred on the scene"),
        "weights": prep["weights"],
        "tile_px": args.tile_px,
        "overlap_px": args.overlap_px,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": results,
    }
    print(_table(results), file=sys.stderr)
    print("ts/peer = terraseg Mpx/s ÷ the tool's Mpx/s; efficiency = model-only s ÷ wall s "
          "(CPU effic.: the same in CPU seconds, less sensitive to other load); agree = share "
          "of pixels whose class equals terraseg's", file=sys.stderr)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)
    print(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-px", type=int, default=4096, help="synthetic scene side (pixels)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of "
                    + ",".join(TOOLS))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads per tool")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--overlap-px", type=int, default=64)
    ap.add_argument("--chunk-px", type=int, default=2048, help="terraseg chunk size")
    ap.add_argument("--channels-last-peers", action="store_true",
                    help="also put the peers' model in channels-last memory format "
                    "(terraseg always does on CPU); off by default, as their users run it")
    ap.add_argument("--raw-init", action="store_true",
                    help="use the seed-0 weights as they are, without centring the head's "
                    "logits (the classes then agree trivially: one class everywhere)")
    ap.add_argument("--terraseg-python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--peers-python", default="/work/peers-venv/bin/python")
    ap.add_argument("--out", default=str(HERE / "peers.json"), help="where to write the JSON")
    # internal: the same file is the worker each subprocess runs
    ap.add_argument("--_prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_worker", dest="worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--_compare", dest="compare", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._prepare:
        print(json.dumps(_prepare(args)))
    elif args.worker:
        print(json.dumps(_worker(args)))
    elif args.compare:
        print(json.dumps(_compare(args)))
    else:
        _driver(args)


if __name__ == "__main__":
    main()
