"""Arithmetic: float32 against bfloat16 mixed, for training and prediction, in one run.

Training (``terraseg train --precision``), two figures per precision, on the
machine's default device (``--accelerator``):

* **model only**: one optimiser step (forward, loss, backward, AdamW) of the
  ``oam-buildings`` network on a random batch, after warm-up steps;
* **training**: ``train_semantic`` on a synthetic city (``make_city`` seed 11,
  1024² at 0.5 m; data loading, augmentation, per-epoch validation included),
  the same seed and steps for both, with its held-out building IoU.

Prediction (``terraseg predict --amp``): ``demo-semantic`` over the same city
(tile 512, overlap 64; after an untimed warm-up), ``--amp off`` against ``bf16``
(CUDA, or a CPU with native bfloat16; skipped elsewhere), with the share of
pixels given the same class and the building pixel IoU of each against the truth.

Prints one human line per run and one JSON line with the ratios (float32 time /
mixed time). Mixed precision lays tensors out channels-last, as ``terraseg
train`` does (``terraseg predict`` always does).

Usage::

    python benchmarks/precision.py                 # ~4 min on 2 cores
    python benchmarks/precision.py --steps 200 --accelerator gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from terraseg.api import predict_to_dir
from terraseg.engine.inference import resolve_amp
from terraseg.errors import ConfigError
from terraseg.models.card import load_card
from terraseg.models.networks import build_network
from terraseg.models.task import resolve_accelerator
from terraseg.models.train import train_semantic
from terraseg.synthetic import make_city

BUNDLED = Path(__file__).resolve().parents[1] / "src/terraseg/models/bundled"


def model_step_seconds(precision: str, device: str, batch: int, patch: int, reps: int) -> float:
    """Mean seconds of one optimiser step of oam-buildings' network, after two warm-up steps."""
    arch = load_card(BUNDLED / "oam-buildings.card.yaml").architecture
    net = build_network(arch, source="the benchmark").to(device).train()
    mixed = precision != "32"
    fmt = torch.channels_last if mixed else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 4, (batch, patch, patch), device=device)
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    seconds = 0.0
    for i in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=mixed):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            seconds += time.perf_counter() - t0
    return seconds / reps


def training(precision: str, city: Path, out: Path, steps: int, accelerator: str) -> dict[str, Any]:
    """Seconds a step and held-out building IoU of one ``train_semantic`` run."""
    t0 = time.perf_counter()
    card = train_semantic(
        city, city.with_name("city.truth.gpkg"), out / precision, max_steps=steps,
        steps_per_epoch=steps, batch_size=8, patch_px=256, seed=0, precision=precision,
        accelerator=accelerator, num_workers=1, architecture=load_card(
            BUNDLED / "demo-semantic.card.yaml").architecture,
    )
    seconds = time.perf_counter() - t0
    return {"train_s_per_step": round(seconds / steps, 3),
            "val_iou_building": card.metrics.get("val_iou_building")}


def prediction(city: Path, out: Path, device: str) -> dict[str, Any]:
    """Seconds of ``terraseg predict`` with amp off and bf16, class agreement, building IoU."""
    import rasterio

    try:
        resolve_amp("bf16", torch.device(device))
    except ConfigError as exc:
        print(f"prediction: bf16 skipped ({exc})", flush=True)
        return {}
    with rasterio.open(city.with_name("city.truth.tif")) as src:
        truth = src.read(1) == 1
    row: dict[str, Any] = {}
    classes = {}
    for amp in ("off", "bf16", "off", "bf16"):  # the first two warm up
        t0 = time.perf_counter()
        res = predict_to_dir(city, out / f"predict-{amp}", model="demo-semantic", device=device,
                             amp=amp, overwrite=True, show_progress=False)
        row[f"predict_s_{amp}"] = round(time.perf_counter() - t0, 2)
        with rasterio.open(res.classes_path) as src:
            classes[amp] = src.read(1)
    for amp, c in classes.items():
        b = c == 1
        row[f"building_iou_{amp}"] = round(float((b & truth).sum() / (b | truth).sum()), 4)
    row["same_class"] = round(float((classes["off"] == classes["bf16"]).mean()), 4)
    row["predict_speedup"] = round(row["predict_s_off"] / row["predict_s_bf16"], 2)
    print(f"prediction: float32 {row['predict_s_off']:.1f} s, bf16 {row['predict_s_bf16']:.1f} s "
          f"({row['predict_speedup']:.2f}x); same class on {row['same_class']:.2%} of pixels; "
          f"building IoU {row['building_iou_off']:.3f} / {row['building_iou_bf16']:.3f}",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=60, help="Training steps of each run.")
    parser.add_argument("--reps", type=int, default=10, help="Timed model-only steps.")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu.")
    parser.add_argument("--mixed", default=None,
                        help="The mixed precision to compare (default bf16-mixed; 16-mixed "
                        "on a GPU without bfloat16).")
    args = parser.parse_args()
    accelerator = resolve_accelerator(args.accelerator)
    device = "cpu" if accelerator == "cpu" else "cuda"
    mixed = args.mixed or ("16-mixed" if device == "cuda" and not torch.cuda.is_bf16_supported()
                           else "bf16-mixed")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        city = Path(tmp) / "city.tif"
        make_city(city, size_px=1024, seed=11)
        for precision in ("32", mixed):
            row = {"model_s_per_step": round(
                model_step_seconds(precision, device, 8, 256, args.reps), 3)}
            row |= training(precision, city, Path(tmp), args.steps, accelerator)
            rows[precision] = row
            print(f"{precision:>10}: model step {row['model_s_per_step']:.3f} s, training "
                  f"{row['train_s_per_step']:.3f} s/step (data, augmentation and validation "
                  f"included), held-out building IoU {row['val_iou_building']:.3f}", flush=True)
        predicted = prediction(city, Path(tmp), device)
    f32, mix = rows["32"], rows[mixed]
    print(json.dumps({
        "benchmark": "precision", "device": accelerator,
        "machine": f"{platform.machine()} x{torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "steps": args.steps, "runs": rows,
        "model_speedup": round(f32["model_s_per_step"] / mix["model_s_per_step"], 2),
        "training_speedup": round(f32["train_s_per_step"] / mix["train_s_per_step"], 2),
        "prediction": predicted,
    }))


if __name__ == "__main__":
    main()
