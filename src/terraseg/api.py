"""Plain-function entry points shared by the CLI and notebooks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, cast

from terraseg.inference import AmpMode, TilePredictor
from terraseg.models.loading import load_model
from terraseg.pipeline import PredictResult, Ramp, plan_scene, predict_scene
from terraseg.progress import progress_callback
from terraseg.scene import open_scene

__all__ = ["plan_summary", "predict_to_dir"]


def plan_summary(
    scene: str | os.PathLike[str],
    *,
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    assume_crs: str | None = None,
) -> dict[str, Any]:
    """Describe the chunk plan of a scene without reading pixels."""
    sc = open_scene(scene, assume_crs=assume_crs)
    grid = plan_scene(sc, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    return {
        "scene": str(sc.path),
        "shape": list(sc.shape),
        "crs": sc.crs.to_string(),
        "gsd_m": sc.gsd_m,
        **grid.summary(),
    }


def predict_to_dir(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "cheap",
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    batch_size: int = 8,
    device: str = "auto",
    amp: str = "auto",
    ramp: str = "cosine",
    write_probabilities: bool = False,
    assume_crs: str | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> PredictResult:
    """Open a scene, build the model and predictor, and run :func:`predict_scene`.

    Everything is validated (scene, CRS, sizes, device, model, outputs) before
    the model sees a pixel.
    """
    from terraseg.errors import ConfigError

    if ramp not in ("cosine", "linear", "none"):
        raise ConfigError(f"unknown ramp '{ramp}'; use cosine, linear or none", ramp=ramp)
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"unknown amp '{amp}'; use auto, bf16, fp16 or off", amp=amp)
    sc = open_scene(scene, assume_crs=assume_crs)
    plan_scene(sc, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)  # validates sizes
    net, card = load_model(model)
    spec = card.to_spec()
    predictor = TilePredictor(
        net, device=device, batch_size=batch_size, amp=cast(AmpMode, amp),
        activation=spec.activation,
    )
    config = {
        "scene": str(Path(scene)), "model": model, "tile_px": tile_px, "overlap_px": overlap_px,
        "chunk_px": chunk_px, "batch_size": batch_size, "device": device, "amp": amp,
        "ramp": ramp, "write_probabilities": write_probabilities, "assume_crs": assume_crs,
    }
    show = sys.stderr.isatty() if show_progress is None else show_progress
    with progress_callback("predict", unit="chunk", enabled=show) as cb:
        return predict_scene(
            sc, predictor, spec, out, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px,
            ramp=cast(Ramp, ramp), write_probabilities=write_probabilities, overwrite=overwrite,
            progress=cb, config=config,
        )


