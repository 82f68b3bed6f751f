"""Batch runs: a workflow (config) over many scenes, on Dask or in-process.

This module unpacks a :class:`~terraseg.config.Workflow` into plain keyword
arguments for :mod:`terraseg.engine.pipeline` and :mod:`terraseg.engine.distributed`; no
config object goes further in.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terraseg._version import __version__
from terraseg.config import Workflow
from terraseg.core.grid import ChunkGrid
from terraseg.errors import ConfigError, TerrasegError
from terraseg.io.inputs import SceneInput, open_input, resolve_inputs
from terraseg.io.remote import is_remote
from terraseg.io.scene import Scene
from terraseg.models.spec import ModelSpec

if TYPE_CHECKING:
    from terraseg.engine.cluster import ScenePlan
    from terraseg.engine.distributed import PredictorOptions

__all__ = ["RunSummary", "SceneSummary", "plan_workflow", "run_workflow"]


@dataclass(slots=True)
class SceneSummary:
    """What happened to one scene."""

    scene: str
    out_dir: str
    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RunSummary:
    """What :func:`run_workflow` did."""

    name: str
    out_dir: str
    scenes: list[SceneSummary]
    seconds: float
    client: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out_dir": self.out_dir,
            "seconds": round(self.seconds, 3),
            "client": self.client,
            "scenes": [
                {"scene": s.scene, "out_dir": s.out_dir, "outputs": s.outputs, "stats": s.stats}
                for s in self.scenes
            ],
        }


def _output_root(wf: Workflow, out: str | os.PathLike[str] | None) -> str:
    """The run's output location: a local folder, or an ``s3://`` prefix kept as a URL."""
    where = os.fspath(out) if out is not None else wf.outputs.dir
    if is_remote(where):
        return where.rstrip("/")
    return str(wf.output_dir(out))


def _scene_out(root: Path | str, stem: str, taken: set[str]) -> Path | str:
    name, n = stem, 1
    while name in taken:  # two inputs with the same stem get distinct folders
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return f"{root}/{name}" if isinstance(root, str) and is_remote(root) else Path(root) / name


def plan_workflow(wf: Workflow, *, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Dry run: every scene's chunk plan and task count, validating inputs; reads no pixels.

    With a ``predict`` stage, a scene whose GSD is outside the model card's
    tolerance is planned on the model-GSD grid it will run on (``model_grid``), or
    refused here with ``inference.resample: false``.
    """
    from terraseg.engine.adapt import model_grid, model_gsd

    scenes = []
    total_tasks = 0
    total_mpx = 0.0
    root = wf.output_dir(out)
    taken: set[str] = set()
    gsd = None
    if "predict" in wf.stages and (wf.models.semantic or wf.models.instance):
        try:
            gsd = model_gsd(wf.models.semantic, wf.models.instance)
        except TerrasegError:  # a plan reads no model: the run reports a bad one
            gsd = None
    for inp in resolve_inputs(wf.scene_paths(), asset=wf.inputs.asset):
        sc = open_input(inp, assume_crs=wf.inputs.assume_crs)
        gridmap, _ = model_grid(sc, gsd, resample=wf.inference.resample)
        shape = gridmap.model_shape if gridmap is not None else sc.shape
        grid = ChunkGrid.from_shape(shape, tile_px=wf.tiling.tile_px,
                                    overlap_px=wf.tiling.overlap_px, chunk_px=wf.tiling.chunk_px)
        summary = grid.summary()
        total_tasks += summary["n_chunks"]
        total_mpx += sc.shape[0] * sc.shape[1] / 1e6
        scenes.append({"scene": inp.href, **inp.run_info(),
                       "out_dir": str(_scene_out(root, inp.name, taken)),
                       "crs": sc.crs.to_string(), "gsd_m": round(sc.gsd_m, 4), **summary,
                       **({"model_grid": list(shape)} if gridmap is not None else {})})
    return {
        "workflow": wf.name,
        "stages": list(wf.stages),
        "scenes": scenes,
        "n_scenes": len(scenes),
        "chunk_tasks": total_tasks,
        "megapixels": round(total_mpx, 3),
    }


def run_workflow(
    wf: Workflow,
    *,
    out: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    client: Any = None,
    announce: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run every stage of ``wf`` over every scene.

    Parameters
    ----------
    wf
        A loaded workflow (:func:`terraseg.config.load_workflow`).
    out
        Output folder; overrides ``outputs.dir``.
    scheduler
        A Dask scheduler address; overrides the workflow's ``cluster``.
    resume
        Continue an interrupted run: chunks already stored are not recomputed.
    overwrite
        Replace existing outputs.
    progress
        ``progress(label, done, total)`` as tasks finish, per scene and stage
        (``"<scene> chunks"``, ``"<scene> finishing"``, ``"<scene> vectors"``).
    client
        A ``distributed.Client`` to use instead of the workflow's ``cluster``
        (e.g. the one a notebook already started).
    announce
        Called with one line when a cluster starts (its Dask dashboard link).
    """
    from terraseg.engine.adapt import adapt_scene, model_gsd
    from terraseg.engine.cluster import run_scenes
    from terraseg.engine.distributed import PredictorOptions, connect, get_worker_predictor

    t0 = time.perf_counter()
    if wf.stages == ["train"]:
        root = wf.output_dir(out)
        trained = _train_stage(wf, root, overwrite=overwrite, resume=resume)
        result = RunSummary(wf.name, str(root), [trained], time.perf_counter() - t0)
        _write_summary(root, wf, result)
        return result
    if "train" in wf.stages:
        raise ConfigError("stage 'train' runs alone; put it in its own workflow (see "
                          "workflows/train_demo.yaml)")
    root_url = _output_root(wf, out)
    # validate every scene (STAC items: one per item) and the model before any compute
    inputs = resolve_inputs(wf.scene_paths(), asset=wf.inputs.asset)
    scenes = [open_input(i, assume_crs=wf.inputs.assume_crs) for i in inputs]
    stages = list(wf.stages)
    if "predict" in stages and not (wf.models.semantic or wf.models.instance):
        raise ConfigError("stage 'predict' needs models.semantic and/or models.instance (a "
                          "bundled name such as demo-instance, or a checkpoint path)")
    opts = PredictorOptions(
        model=wf.models.semantic, instance=wf.models.instance, device=wf.inference.device,
        batch_size=wf.inference.batch_size, amp=wf.inference.amp,
        backend=wf.inference.backend, tta=wf.inference.tta,
    )
    _, card_spec = get_worker_predictor(opts)  # validates model, card and device
    # each scene as the model sees it (GSD, bands, bit depth), all checked before any compute
    gsd = model_gsd(wf.models.semantic, wf.models.instance)
    adapted = [adapt_scene(sc, card_spec, gsd=gsd, resample=wf.inference.resample)
               for sc in scenes]
    cluster = wf.cluster
    kwargs: dict[str, Any] = {
        "type": cluster.type, "address": cluster.address, "n_workers": cluster.n_workers,
        "threads_per_worker": cluster.threads_per_worker, "memory_limit": cluster.memory_limit,
        "tls": cluster.tls.model_dump() if cluster.tls else None,
        "dashboard": cluster.dashboard, "device": wf.inference.device, "announce": announce,
    }
    if scheduler:
        kwargs.update(type="address", address=scheduler)
    taken: set[str] = set()
    config = wf.model_dump(mode="json") | {"config_hash": wf.config_hash()}
    plans = [  # every scene's outputs and resume state checked before any compute
        _plan_scene(wf, sc, inp, str(_scene_out(root_url, inp.name, taken)), opts=opts, spec=spec,
                    config=config, resume=resume, overwrite=overwrite)
        for inp, (sc, spec) in zip(inputs, adapted, strict=True)
    ]
    ctx = contextlib.nullcontext(client) if client is not None else connect(**kwargs)
    with ctx as client:
        outcomes, figures = run_scenes(plans, client, in_flight=wf.cluster.scenes_in_flight,
                                       progress=progress,
                                       resources=_resources(wf.inference.device, client))
    summaries = [SceneSummary(scene=o.job.scene.path, out_dir=o.job.out_dir,
                              outputs=o.outputs, stats=o.stats or _resumed_stats(o.job))
                 for o in outcomes]
    result = RunSummary(wf.name, root_url, summaries, time.perf_counter() - t0, figures)
    _write_summary(root_url, wf, result)
    return result


def _plan_scene(
    wf: Workflow,
    sc: Scene,
    inp: SceneInput,
    scene_dir: str,
    *,
    opts: PredictorOptions,
    spec: ModelSpec,
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> ScenePlan:
    """One workflow scene's job for :func:`~terraseg.engine.cluster.run_scenes`."""
    export = "export" in wf.stages
    return plan_scene_job(
        sc, inp, scene_dir, opts=opts, spec=spec, tile_px=wf.tiling.tile_px,
        overlap_px=wf.tiling.overlap_px, chunk_px=wf.tiling.chunk_px, ramp=wf.tiling.ramp,
        pad=wf.tiling.pad, probabilities=wf.outputs.probabilities, predict="predict" in wf.stages,
        vectorize="vectorize" in wf.stages or export,
        formats=tuple(wf.outputs.formats) if export else ("gpkg",),
        to_crs=wf.outputs.crs if export else None, config=config,
        run_info={"config_hash": wf.config_hash()}, resume=resume, overwrite=overwrite,
    )


def plan_scene_job(
    sc: Scene,
    inp: SceneInput,
    scene_dir: str,
    *,
    opts: PredictorOptions,
    spec: ModelSpec,
    tile_px: int,
    overlap_px: int,
    chunk_px: int,
    ramp: str = "cosine",
    pad: str = "reflect",
    probabilities: bool = False,
    predict: bool = True,
    vectorize: bool = True,
    formats: tuple[str, ...] = ("gpkg",),
    to_crs: str | None = None,
    config: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> ScenePlan:
    """One scene's job for :func:`~terraseg.engine.cluster.run_scenes`, checked before any compute.

    What ``terraseg run`` plans for each scene of a workflow and ``terraseg
    predict`` for its one scene. ``sc`` is the scene as the model sees it
    (:func:`~terraseg.engine.adapt.adapt_scene`); ``scene_dir`` a local folder or
    an ``s3://`` prefix. Refuses existing outputs (unless ``overwrite``) and a
    resume of another configuration; writes the chunk store's manifest; a
    resumed scene whose outputs are finished is not predicted (nor vectorized)
    again.
    """
    from terraseg.engine.cluster import ScenePlan
    from terraseg.engine.pipeline import _resumable_chunks, check_bands, plan_scene
    from terraseg.engine.resume import build_manifest, check_finished
    from terraseg.engine.tasks import SceneJob
    from terraseg.io.chunkstore import DirStore
    from terraseg.io.objstore import STAGE_DIR, open_store
    from terraseg.models.identity import run_model_fingerprint

    out = open_store(scene_dir)
    grid = plan_scene(sc, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    manifest = None
    done: set[tuple[int, int]] = set()
    if predict:
        check_bands(sc, spec)
        manifest = build_manifest(
            sc, spec, grid, model=run_model_fingerprint(opts.model, opts.instance), ramp=ramp,
            pad=pad, probabilities=probabilities, tta=opts.tta, amp=opts.amp)
        # outputs are published together, run.json last: classes.tif without run.json is
        # a run killed while publishing, resumed from its chunk store like any other
        if resume and out.exists("classes.tif") and out.exists("run.json"):
            check_finished(scene_dir, (out, "run.json"), manifest)  # another config: refused
            predict = False
        else:
            _check_outputs(out, probabilities=probabilities, overwrite=overwrite or resume,
                           vectors=f"{inp.name}.gpkg" if vectorize else None)
            done = _resumable_chunks(scene_dir, DirStore(out.child(".chunks")), manifest,
                                     resume=resume, overwrite=overwrite)
            out.delete_prefix("failures.jsonl")
    if vectorize and not predict and not out.exists("classes.tif"):
        raise ConfigError(
            f"stage 'vectorize' needs '{out.url_of('classes.tif')}'; add 'predict' to stages or "
            "run it first"
        )
    if vectorize and resume and not predict and out.exists(f"{inp.name}.gpkg"):
        vectorize = False  # finished by the run being resumed
    job = SceneJob(
        name=inp.name, scene=sc, spec=spec, grid=grid, opts=opts, out_dir=scene_dir,
        ramp=ramp, pad=pad, with_probs=probabilities, predict=predict, vectorize=vectorize,
        formats=formats, to_crs=to_crs, vector_chunk_px=chunk_px,
        relabel=not (resume and not predict and out.exists("instances.tif")),
        imagery=sc.path if _is_file(sc.path) and not sc.crs_assumed else None,
        run_info={**(run_info or {}), "model": spec.name, **inp.run_info()},
        stage=STAGE_DIR if predict else "",
    )
    if predict:  # what an interrupted run had staged is written again
        out.child(STAGE_DIR).delete_prefix("")
    return ScenePlan(job, manifest, frozenset(done), dict(config or {}) | inp.run_info())


def _check_outputs(out: Any, *, probabilities: bool, overwrite: bool,
                   vectors: str | None = None) -> None:
    """Refuse to replace a finished scene's outputs unless ``overwrite``; probe the store."""
    from terraseg.engine.outputs import output_paths
    from terraseg.errors import OutputExistsError
    from terraseg.io.objstore import check_store

    if out.is_local:
        output_paths(Path(out.url), write_probabilities=probabilities, overwrite=overwrite)
    else:
        check_store(out)  # one line for a missing bucket or unreachable endpoint, before compute
    names = ("classes.tif", "probabilities.tif" if probabilities else "", "run.json",
             vectors or "")
    for name in names:
        if name and out.exists(name) and not overwrite:
            raise OutputExistsError(f"output '{out.url_of(name)}' already exists; pass "
                                    "--overwrite to replace it", path=out.url_of(name))


def _resources(device: str, client: Any) -> dict[str, float] | None:
    """Worker resources a chunk task asks for (``{"GPU": 1}`` on ``device: cuda``).

    Checked against the connected workers: a GPU that no worker advertises is
    refused with one line instead of leaving the tasks waiting.
    """
    from terraseg.engine.distributed import check_worker_resources, chunk_resources

    if client is None:
        return None
    resources = chunk_resources(device, client=client)
    if resources:
        check_worker_resources(client, resources)
    return resources


def _resumed_stats(job: Any) -> dict[str, Any]:
    return {"chunks_computed": 0, "chunks_resumed": "all"} if not job.predict else {}


def _train_stage(wf: Workflow, root: Path, *, overwrite: bool, resume: bool) -> SceneSummary:
    """Train a semantic model from the workflow's ``train:`` section.

    A run paused at ``max_minutes`` goes on with ``terraseg run --resume``
    (:mod:`terraseg.models.resume`).

    ``image: synthetic`` generates one city per seed (the last seed is the
    validation scene) with :func:`terraseg.synthetic.make_city` into
    ``<out>/data``; otherwise ``image``/``labels`` name a GeoTIFF and its
    vector labels (layers ``buildings`` and ``roads``).
    """
    from terraseg.models.resume import state_file
    from terraseg.models.train import train_semantic

    cfg = wf.train
    assert cfg is not None  # the Workflow validator guarantees it
    out = root / Path(cfg.out).name  # weights go in the run's output folder
    kw: dict[str, Any] = {}
    if cfg.image == "synthetic":
        from terraseg.synthetic import make_city

        if len(cfg.seeds) < 2:
            raise ConfigError("train.seeds needs at least 2 seeds: training scene(s) + 1 for "
                              "validation")
        data = root / "data"
        cities = [make_city(data / f"city_s{s}.tif", size_px=cfg.size_px, seed=s,
                            overwrite=True) for s in cfg.seeds]
        images = [c.image for c in cities[:-1]]
        labels = [c.truth_classes for c in cities[:-1]]
        kw = {"val_image": cities[-1].image, "val_labels": cities[-1].truth_classes}
    else:
        if cfg.labels is None:
            raise ConfigError("train.labels is required unless train.image is 'synthetic'")
        images, labels = [Path(wf.resolve(cfg.image))], [Path(wf.resolve(cfg.labels))]
    if cfg.label_extent is not None:  # relative to the workflow file, like image and labels
        extents = [cfg.label_extent] if isinstance(cfg.label_extent, str) else cfg.label_extent
        kw["label_extent"] = [wf.resolve(e) for e in extents]
    if resume and state_file(out).exists():  # `terraseg run --resume`
        kw["resume"] = True  # continues a train stage paused at max_minutes
    card = train_semantic(images, labels, out, cfg, name=cfg.name or out.name, **kw)
    assert card.weights is not None  # train_semantic names the file it wrote
    weights = out.parent / card.weights
    return SceneSummary(scene=str(cfg.image), out_dir=str(out.parent),
                        outputs={"weights": str(weights)}, stats=dict(card.metrics))


def _finished(path: Path) -> bool:
    """An output written by an earlier run (atomic writes: present means complete)."""
    return path.exists()


def _write_summary(root: Path | str, wf: Workflow, result: RunSummary) -> None:
    """``run.json`` at the top of the output folder: resolved config, version, results."""
    payload = {
        "terraseg_version": __version__,
        "workflow": wf.model_dump(mode="json"),
        "config_hash": wf.config_hash(),
        **result.to_dict(),
    }
    from terraseg.io.objstore import open_store

    try:  # a local folder (written under a temporary name, then renamed) or s3://
        open_store(root).put_bytes("run.json", json.dumps(payload, indent=2,
                                                          default=str).encode())
    except OSError as exc:  # pragma: no cover - reported, outputs already written
        raise TerrasegError(f"cannot write run summary in '{root}': {exc}") from exc


def _is_file(path: str) -> bool:
    """A scene on the local file system (a remote one is not placed in the project)."""
    return not is_remote(path) and Path(path).is_file()
