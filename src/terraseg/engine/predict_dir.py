"""``terraseg predict``: one scene into an output folder, through the workflows' driver.

:func:`predict_to_dir` plans the scene as :func:`terraseg.engine.batch.run_workflow`
plans each scene of a workflow (:func:`~terraseg.engine.batch.plan_scene_job`) and
runs it with :func:`~terraseg.engine.cluster.run_scenes`, in this process or on a
Dask client: the same tasks, chunk store, ``failures.jsonl`` and resume.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terraseg.engine.adapt import adapt_scene, model_gsd
from terraseg.engine.inference import check_tta
from terraseg.engine.outputs import PredictResult
from terraseg.engine.pipeline import plan_scene
from terraseg.io.inputs import SceneInput, open_input, scene_input
from terraseg.io.remote import is_remote
from terraseg.io.stac import DEFAULT_ASSET

if TYPE_CHECKING:
    import distributed

    from terraseg.errors import ChunkFailedError
    from terraseg.io.scene import Scene

__all__ = ["HUGE_SCENE_PX", "LargeSceneWarning", "predict_to_dir", "warn_if_huge"]


def _scene_label(inp: SceneInput) -> str:
    """How run.json names the scene: the STAC document, the URL, or the normalised path."""
    if inp.stac_source is not None:
        return inp.stac_source
    return inp.href if is_remote(inp.href) else str(Path(inp.href))



#: Above this many pixels a single-process ``predict`` warns and suggests a cluster run.
HUGE_SCENE_PX = 2_000_000_000


class LargeSceneWarning(UserWarning):
    """A scene so large that one process will take hours; use ``terraseg run`` on Dask."""


def warn_if_huge(scene: Scene, n_chunks: int) -> None:
    """Warn, before any compute, when a single-process run over ``scene`` would be very long."""
    import warnings

    px = scene.shape[0] * scene.shape[1]
    if px > HUGE_SCENE_PX:
        warnings.warn(
            f"scene '{scene.path}' is {px / 1e9:.1f} Gpx ({n_chunks} chunks): one process "
            "will take hours; run it with `terraseg run` on a Dask cluster, or predict a "
            "window with terraseg.predict(..., window=...)",
            LargeSceneWarning,
            stacklevel=3,
        )


def predict_to_dir(
    scene: str | os.PathLike[str] | SceneInput,
    out: str | os.PathLike[str],
    *,
    model: str = "demo-instance",
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
    backend: str = "torch",
    asset: str = DEFAULT_ASSET,
    resample: bool = True,
    tta: str = "none",
    min_score: float | None = None,
    min_area_m2: float | None = None,
    seed_p: float | None = None, landscape: str | None = None,
    vectorize: bool = False,
    resume: bool = False,
    client: distributed.Client | None = None,
) -> PredictResult:
    """Predict one scene into ``out``: ``classes.tif``, ``run.json`` and, with ``vectorize``,
    ``instances.tif``, ``panoptic.tif``, ``<scene>.gpkg`` and ``<scene>.qgz``.

    The scene runs as one scene of a workflow does
    (:func:`~terraseg.engine.cluster.run_scenes`): chunk tasks store their results in
    ``out/.chunks``, and the finishing tasks write the outputs from there, in this
    process or, given a Dask ``client``, on its workers. A chunk that fails is
    written to ``out/failures.jsonl``, the others are stored, and
    :class:`~terraseg.errors.ChunkFailedError` is raised; ``resume=True`` then
    computes only the missing chunks (refused, naming the change, when the model,
    tiling or scene changed since).

    ``scene`` is a path, an ``http(s)://`` or ``s3://`` URL (read with range
    requests), a STAC item JSON (``asset`` picks its raster by key or role), or
    a :class:`~terraseg.io.inputs.SceneInput` from :func:`scene_input`. A STAC
    item's id and asset are recorded in ``run.json``.

    The scene is adapted to the model's card (:func:`terraseg.engine.adapt.adapt_scene`):
    resampled to its GSD when outside the tolerance (``resample=False`` refuses
    instead), one band repeated to RGB, 16-bit values stretched for an 8-bit
    model; outputs stay on the scene's grid. ``tta="d4"`` averages the eight
    flips and rotations of every tile. ``min_score``, ``min_area_m2``, ``seed_p`` and
    ``landscape`` replace the card's ``building_*`` settings (vector filters; a boundary
    model's watershed).

    Everything is validated (scene, CRS, sizes, device, model, outputs) before
    the model sees a pixel. A scene that turns out unreadable in some chunks (a
    corrupt block) raises its :class:`~terraseg.errors.SceneReadError`, keeping
    nothing: a repaired file is a new scene, not a run to resume.
    """
    from terraseg.engine.batch import plan_scene_job
    from terraseg.engine.cluster import run_scenes
    from terraseg.engine.distributed import PredictorOptions, get_worker_predictor
    from terraseg.errors import ChunkFailedError
    from terraseg.progress import progress_bars

    _check_options(ramp=ramp, amp=amp, backend=backend, tta=tta)
    inp = scene if isinstance(scene, SceneInput) else scene_input(scene, asset=asset)
    sc = open_input(inp, assume_crs=assume_crs)
    opts = PredictorOptions(model=model, device=device, batch_size=batch_size, amp=amp,
                            backend=backend, tta=tta)
    spec = _with_filters(get_worker_predictor(opts)[1], min_score, min_area_m2, seed_p, landscape)
    view, spec = adapt_scene(sc, spec, gsd=model_gsd(model), resample=resample)
    warn_if_huge(sc, len(plan_scene(view, tile_px=tile_px, overlap_px=overlap_px,
                                    chunk_px=chunk_px)))
    config = {
        "scene": _scene_label(inp), **inp.run_info(), "crs_assumed": sc.crs_assumed,
        "model": model, "tile_px": tile_px, "overlap_px": overlap_px,
        "chunk_px": chunk_px, "batch_size": batch_size, "device": device, "amp": amp,
        "backend": backend, "resample": resample, "tta": tta,
        **{f"building_{k}": v for k, v in spec.building_settings().items()},
        "ramp": ramp, "write_probabilities": write_probabilities, "assume_crs": assume_crs,
    }
    out_dir = Path(out)
    plan = plan_scene_job(
        view, inp, str(out_dir), opts=opts, spec=spec, tile_px=tile_px, overlap_px=overlap_px,
        chunk_px=chunk_px, ramp=ramp, probabilities=write_probabilities, vectorize=vectorize,
        config=config, resume=resume, overwrite=overwrite)
    show = sys.stderr.isatty() if show_progress is None else show_progress
    with progress_bars(enabled=show) as bar:
        try:
            (outcome,), _ = run_scenes([plan], client, progress=bar)
        except ChunkFailedError as exc:  # the chunks stored are kept for --resume
            _raise_if_unreadable(exc, plan.job)
            raise
        except Exception:  # a finishing step failed (a full disk...): no partial output
            _discard(plan.job)
            raise
    run_json = out_dir / "run.json"
    probs = out_dir / "probabilities.tif"
    return PredictResult(out_dir, out_dir / "classes.tif", probs if probs.exists() else None,
                         run_json, json.loads(run_json.read_text()), outputs=outcome.outputs,
                         counts=outcome.counts, n_instances=outcome.n_instances)


def _check_options(*, ramp: str, amp: str, backend: str, tta: str) -> None:
    from terraseg.errors import ConfigError

    if ramp not in ("cosine", "linear", "none"):
        raise ConfigError(f"unknown ramp '{ramp}'; use cosine, linear or none", ramp=ramp)
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"unknown amp '{amp}'; use auto, bf16, fp16 or off", amp=amp)
    if backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"unknown backend '{backend}'; use torch or onnxruntime",
                          backend=backend)
    check_tta(tta)


def _raise_if_unreadable(exc: ChunkFailedError, job: Any) -> None:
    """Chunks that failed only because the scene cannot be read (a corrupt block): bad
    input, not a run to resume (repairing the file changes it, and a resume of a changed
    scene is refused). Raise the read error itself, as one line, and keep nothing."""
    from terraseg.errors import SceneReadError

    cause = exc.__cause__
    if isinstance(cause, SceneReadError) and all(
            name == type(cause).__name__ for name in getattr(exc, "error_types", ("?",))):
        _discard(job)
        raise cause from None


def _discard(job: Any) -> None:
    """Remove what a failed run of ``job`` wrote: its chunk store, staged outputs, failures."""
    from terraseg.engine.cluster import drop_stage

    job.store.clear()
    job.final_store.delete_prefix("failures.jsonl")
    drop_stage(job)


def _with_filters(spec: Any, min_score: float | None, min_area_m2: float | None,
                  seed_p: float | None = None, landscape: str | None = None) -> Any:
    """``spec`` with the building settings replaced where given (checked)."""
    from terraseg.errors import ConfigError

    if min_score is not None:
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score must lie in [0, 1], got {min_score}", min_score=min_score)
        spec = spec.model_copy(update={"building_min_score": float(min_score)})
    if min_area_m2 is not None:
        if not min_area_m2 >= 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {min_area_m2}",
                              min_area_m2=min_area_m2)
        spec = spec.model_copy(update={"building_min_area_m2": float(min_area_m2)})
    if seed_p is not None:
        if not 0.0 < seed_p <= 1.0:
            raise ConfigError(f"seed_p must lie in (0, 1], got {seed_p}", seed_p=seed_p)
        spec = spec.model_copy(update={"building_seed_p": float(seed_p)})
    if landscape is not None:
        if landscape not in ("edge", "distance"):
            raise ConfigError(f"landscape must be 'edge' or 'distance', got {landscape!r}",
                              landscape=landscape)
        spec = spec.model_copy(update={"building_landscape": landscape})
    return spec
