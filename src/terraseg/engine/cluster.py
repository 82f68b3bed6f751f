"""The scene driver of batch runs: a task graph per scene, several scenes in flight.

Every scene becomes a graph of worker tasks (:mod:`terraseg.engine.tasks`):
chunks, then each chunk's finished core, then the class COG and the vectors.
The tasks read and write the run's chunk store themselves, so the client only
submits them and receives small dicts (timings, counts, which worker and
device). Up to ``in_flight`` scenes are submitted at once: the finishing work
of one scene overlaps the chunks of the next, and the client's memory stays
bounded whatever the number of scenes.

The same graph runs on a ``distributed.Client`` (a LocalCluster, or workers
started with ``dask worker``) or, with ``client=None``, eagerly in this
process (:class:`LocalClient`): one driver for every entry point.

A chunk whose task raises is written to the scene's ``failures.jsonl``; the
other chunks still run and are stored, the scene's later tasks are skipped,
the other scenes finish, and the run then raises
:class:`~terraseg.errors.ChunkFailedError`. ``--resume`` recomputes only what
is not stored, after checking the store's manifest.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import pickle
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from terraseg.engine.outputs import RunStats, run_stats
from terraseg.engine.tasks import (
    SceneJob,
    chunk_task,
    cog_task,
    core_task,
    export_task,
    finish_options,
    instances_task,
    project_task,
    reduce_buildings_task,
    reduce_roads_task,
    vector_chunk_task,
    vector_scene_task,
)
from terraseg.errors import ChunkFailedError, EmptySceneError
from terraseg.io.manifest import manifest_token

__all__ = ["LocalClient", "SceneOutcome", "drop_stage", "run_scenes"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

# Dask runs higher priorities first. The order is the length of the work that still hangs
# on a task (the "upward rank" of list scheduling): chunks and cores (which free the vectors),
# then the per-chunk vectors, the COG, the reduces, the instance rasters and the export last.
# Within a stage the k-th task of every scene in flight goes before the (k+1)-th, so the scenes
# advance together: all the parallel work is done first, and the scenes' serial tails (reduce,
# instances, export) then run side by side on different workers, not one alone at the end.
_PRIORITY = {"core": 8, "chunk": 7, "vector": 6, "cog": 5, "vectors": 5, "reduce": 4,
             "instances": 3, "export": 3, "project": 2, "probs": 2}
#: What each progress bar of a scene counts.
_STAGES = (("chunks", ("chunk",)), ("finishing", ("core", "cog", "probs")),
           ("vectors", ("vector", "vectors", "reduce", "instances", "export", "project")))
#: Results that only other tasks use: they move worker to worker, never to the client.
_STAY_ON_WORKERS = frozenset({"vector", "reduce", "export"})


# --------------------------------------------------------------------------- local executor


class _Done:
    """A task of :class:`LocalClient` (the part of ``distributed.Future`` used here)."""

    def __init__(self, key: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.key = key
        self._fn: Callable[..., Any] | None = fn
        self._args = args
        self._value: Any = None
        self._exc: BaseException | None = None
        self.tb = ""
        self.status = "pending"

    def run(self) -> None:
        """Run the task (its argument futures ran before it: they were submitted first)."""
        assert self._fn is not None
        bad = next((a for a in self._args if isinstance(a, _Done) and a.status == "error"), None)
        if bad is not None:
            self._exc, self.tb = bad.exception(), bad.tb
        else:
            try:
                self._value = self._fn(*[a.result() if isinstance(a, _Done) else a
                                         for a in self._args])
            except Exception as exc:  # reported like a failed Dask task
                self._exc, self.tb = exc, traceback.format_exc()
        self.status = "error" if self._exc is not None else "finished"
        self._fn, self._args = None, ()

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self) -> BaseException | None:
        return self._exc

    def release(self) -> None:
        return None

    def cancel(self) -> None:
        return None


class LocalClient:
    """Runs the submitted tasks one by one in this process, as they are iterated (synchronous).

    Enough of ``distributed.Client`` for :func:`run_scenes`: ``submit`` with
    futures as arguments (an errored argument errors the task, as on Dask) and
    ``as_completed``, which runs each task when it is reached, in submission
    order, so progress is reported task by task and an interrupted run stops
    at once.
    """

    def __init__(self) -> None:
        self._queue: deque[_Done] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, **_: Any) -> _Done:
        done = _Done(key, fn, args)
        self._queue.append(done)
        return done

    def as_completed(self) -> _LocalCompleted:
        return _LocalCompleted(self._queue)


class _LocalCompleted:
    def __init__(self, queue: deque[_Done]) -> None:
        self._queue = queue

    def add(self, fut: _Done) -> None:  # already queued by submit
        return None

    def __iter__(self) -> Iterator[_Done]:
        while self._queue:
            fut = self._queue.popleft()
            fut.run()
            yield fut


def _as_completed(client: Any) -> Any:
    if isinstance(client, LocalClient):
        return client.as_completed()
    from distributed import as_completed

    return as_completed()


# --------------------------------------------------------------------------- one scene


@dataclass(slots=True)
class SceneOutcome:
    """What :func:`run_scenes` did for one scene."""

    job: SceneJob
    stats: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    #: features per vector layer (``{"buildings": n, ...}``), when the scene was vectorized
    counts: dict[str, int] = field(default_factory=dict)
    #: building instances in ``instances.tif``, when this run labelled them
    n_instances: int | None = None


@dataclass(slots=True)
class _SceneRun:
    job: SceneJob
    manifest: Mapping[str, Any] | None
    done: set[tuple[int, int]]
    config: dict[str, Any]
    outcome: SceneOutcome
    remaining: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)
    run: RunStats = field(default_factory=RunStats)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failure_types: list[str] = field(default_factory=list)  # each failed chunk's error type
    failures_written: float = float("-inf")
    bytes_received: int = 0
    t0: float = field(default_factory=time.perf_counter)

    @property
    def failures_path(self) -> str:
        return self.job.final_store.url_of("failures.jsonl")


def _key(kind: str, sr: _SceneRun, index: tuple[int, int] | None = None) -> str:
    token = manifest_token(sr.manifest)[:12] if sr.manifest else "v"
    where = "" if index is None else f"-{index[0]}-{index[1]}"
    return f"terraseg-{kind}-{sr.job.name}-{token}{where}"


class _Driver:
    """Submits scenes' graphs, follows their futures, and writes what the client must."""

    def __init__(self, client: Any, *, progress: Progress | None, resources: Any,
                 retries: int) -> None:
        self.client = client
        self.progress = progress
        self.resources = resources
        self.retries = retries
        self.meta: dict[str, tuple[_SceneRun, str, tuple[int, int] | None]] = {}
        self.live: dict[str, Any] = {}
        self.ac = _as_completed(client)
        self.bytes_received = 0
        self.tasks = 0

    def _submit(self, sr: _SceneRun, kind: str, fn: Callable[..., Any], *args: Any,
                index: tuple[int, int] | None = None) -> Any:
        key = _key(kind, sr, index)
        ordinal = sr.counts.get(kind, [0, 0])[1]
        kw: dict[str, Any] = {"key": key, "priority": _PRIORITY[kind] * 1_000_000 - ordinal}
        if not isinstance(self.client, LocalClient):
            kw |= {"pure": False, "retries": self.retries if kind == "chunk" else 0}
            if kind == "chunk" and self.resources:
                kw["resources"] = self.resources
        fut = self.client.submit(fn, *args, **kw)
        self.meta[key] = (sr, kind, index)
        self.live[key] = fut
        self.ac.add(fut)
        sr.remaining += 1
        sr.counts.setdefault(kind, [0, 0])[1] += 1
        self.tasks += 1
        return fut

    def admit(self, sr: _SceneRun) -> None:
        """Submit one scene's whole graph."""
        job = sr.job
        # the job goes into every task as it is (a few kB): a scattered copy would be lost
        # with the workers holding it, and then no task of the scene could be recomputed
        job_f = job
        grid = job.grid
        after: list[Any] = []
        if job.predict:
            chunk_f = {c.index: self._submit(sr, "chunk", chunk_task, job_f, c.index, index=c.index)
                       for c in grid if c.index not in sr.done}
            cores = []
            for c in grid:
                deps = [chunk_f[i] for i in [c.index, *(n.index for n in grid.neighbours(c))]
                        if i in chunk_f]
                cores.append(self._submit(sr, "core", core_task, job_f, c.index, *deps,
                                          index=c.index))
            after = [self._submit(sr, "cog", cog_task, job_f, "classes", *cores, index=(0, 0))]
            if job.with_probs:  # not on the way to the vectors: lower priority of its own
                self._submit(sr, "probs", cog_task, job_f, "probabilities", *cores)
                after.append(self.live[_key("probs", sr)])
        if job.vectorize and job.predict and not _regridded(job):
            self._vectors(sr, job_f, cores)
        elif job.vectorize:  # from the class COG (a resampled scene, or vectorize only)
            self._submit(sr, "vectors", vector_scene_task, job_f, *after)
        self._report(sr)

    def _vectors(self, sr: _SceneRun, job_f: Any, cores: list[Any]) -> None:
        """Per-chunk vector tasks from the finished cores, then the scene's reduce and writers."""
        from terraseg.engine.finish import finish_windows

        job = sr.job
        fopts = finish_options(job)
        core_of = dict(zip([c.index for c in job.grid], cores, strict=True))
        parts = []
        for index, window in finish_windows(fopts):
            deps = [core_of[i] for i in _cores_near(job.grid, window, fopts.halo_px)]
            parts.append(self._submit(sr, "vector", vector_chunk_task, job_f, fopts, index,
                                      window, *deps, index=index))
        # two reduces, so that a scene's buildings and roads finish on two workers at once
        buildings = self._submit(sr, "reduce", reduce_buildings_task, job_f, fopts, *parts,
                                 index=(0, 0))
        roads = self._submit(sr, "reduce", reduce_roads_task, job_f, fopts, *parts,
                             index=(0, 1))
        cog = self.live[_key("cog", sr, (0, 0))]
        inst = self._submit(sr, "instances", instances_task, job_f, fopts, buildings, cog)
        # the vector files need only the reduces; the project, written last, needs the masks
        exported = self._submit(sr, "export", export_task, job_f, buildings, roads)
        self._submit(sr, "project", project_task, job_f, exported, inst)

    def _report(self, sr: _SceneRun) -> None:
        if self.progress is None:
            return
        for label, kinds in _STAGES:
            counts = [sr.counts[k] for k in kinds if k in sr.counts]
            if counts:
                done, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
                self.progress(f"{sr.job.name} {label}", done, total)

    def settle(self, fut: Any) -> _SceneRun | None:
        """Record one finished future; returns its scene when that scene has no task left."""
        sr, kind, index = self.meta.pop(fut.key)
        self.live.pop(fut.key, None)
        sr.remaining -= 1
        if fut.status == "error":
            self._failed(sr, kind, index, fut)
        elif fut.status == "finished" and kind not in _STAY_ON_WORKERS:
            res = fut.result()
            size = len(pickle.dumps(res, protocol=5))
            self.bytes_received += size
            sr.bytes_received += size
            self._finished(sr, kind, res)
        elif fut.status != "finished":  # cancelled or lost: never a silent success
            log.warning("task %s ended as %s", fut.key, fut.status)
            if sr.outcome.error is None:
                sr.outcome.error = ChunkFailedError(
                    f"task {fut.key} of scene '{sr.job.name}' ended as {fut.status} (its "
                    "worker or the scheduler went away); rerun with --resume")
        fut.release()
        sr.counts.setdefault(kind, [0, 0])[0] += 1
        self._report(sr)
        return sr if sr.remaining == 0 else None

    def _failed(self, sr: _SceneRun, kind: str, index: tuple[int, int] | None, fut: Any) -> None:
        exc = fut.exception()
        if kind == "chunk" and index is not None:
            tb = getattr(fut, "tb", "") or "".join(traceback.format_exception(exc))
            w = sr.job.grid.chunk(*index).core
            sr.failures.append(json.dumps({
                "chunk": list(index), "window": [w.row_off, w.col_off, w.height, w.width],
                "error": f"{type(exc).__name__}: {exc}", "traceback": tb}))
            sr.failure_types.append(type(exc).__name__)
            if time.monotonic() - sr.failures_written >= 5.0:  # else at the scene's end
                _write_failures(sr)
            if sr.outcome.error is None or not isinstance(sr.outcome.error, ChunkFailedError):
                first = f"chunk {list(index)}: {type(exc).__name__}: {exc}"
                sr.outcome.error = ChunkFailedError(first, failures=sr.failures_path)
                sr.outcome.error.__cause__ = exc  # the first chunk's own error
        elif sr.outcome.error is None:  # a finishing task's own error (not a failed chunk's)
            sr.outcome.error = exc

    def _finished(self, sr: _SceneRun, kind: str, res: dict[str, Any]) -> None:
        for key, value in res.get("seconds", {}).items():
            sr.run.seconds[key] = sr.run.seconds.get(key, 0.0) + value
        if kind == "chunk":
            sr.run.tiles_run += int(res.get("tiles_run", 0))
            sr.run.chunks_skipped_nodata += int(bool(res.get("skipped")))
            keys = ("index", "worker", "device", "gpu", "cuda_visible_devices")
            sr.chunks.append({k: res[k] for k in keys if res.get(k) not in (None, "")}
                             | {"seconds": round(res["seconds"].get("chunk", 0.0), 4)})
        sr.outcome.outputs.update(res.get("outputs", {}))
        sr.outcome.counts.update(res.get("counts", {}))
        if res.get("n_instances") is not None:
            sr.outcome.n_instances = int(res["n_instances"])


def _regridded(job: SceneJob) -> bool:
    """A scene read on a model-GSD grid: its vectors come from the COG on the scene's grid."""
    return getattr(job.scene, "gridmap", None) is not None


def _cores_near(grid: Any, window: Any, halo: int) -> list[tuple[int, int]]:
    """The chunks whose core a read of ``window`` plus ``halo`` touches.

    Chunk cores tile the scene row by row and column by column, so the answer is a
    range of rows times a range of columns, found from the cores' stops.
    """
    rows, cols = grid.shape_in_chunks
    row_stops = [grid.chunk(i, 0).core.row_stop for i in range(rows)]
    col_stops = [grid.chunk(0, j).core.col_stop for j in range(cols)]

    def span(stops: list[int], start: int, stop: int) -> range:
        first = bisect.bisect_right(stops, max(start, 0))
        last = bisect.bisect_left(stops, min(stop, stops[-1]))
        return range(first, last + 1)

    return [(i, j) for i in span(row_stops, window.row_off - halo, window.row_stop + halo)
            for j in span(col_stops, window.col_off - halo, window.col_stop + halo)]


def _finish_scene(sr: _SceneRun, *, keep_chunks: bool) -> None:
    """The client's part of a finished scene: ``run.json``, the store removed, the summary."""
    job = sr.job
    out = sr.outcome
    if isinstance(out.error, EmptySceneError):  # nothing to resume: no partial output either
        job.store.clear()
    if sr.failures:
        _write_failures(sr)
    if out.error is not None:
        drop_stage(job)  # a resume finishes the scene again from its stored chunks
        if isinstance(out.error, ChunkFailedError):
            n = len(job.grid)
            first = out.error
            out.error = ChunkFailedError(
                f"{len(sr.failures)} of {n} chunks failed (first: {first}); details in "
                f"'{sr.failures_path}'; fix the cause and rerun with --resume to compute "
                "only those chunks", failures=sr.failures_path,
                error_types=tuple(sr.failure_types))
            out.error.__cause__ = first.__cause__
        return
    wall = time.perf_counter() - sr.t0
    if job.predict:
        predictor = job.opts.describe()
        devices = sorted({c.get("device", "") for c in sr.chunks} - {""})
        stats = run_stats(
            job.scene, job.spec, job.grid, sr.run, wall=wall, device=",".join(devices),
            predictor=predictor, config=sr.config,
            extra={"chunks_computed": len(sr.chunks), "chunks_resumed": len(sr.done),
                   "manifest": dict(sr.manifest or {}),
                   "chunk_tasks": sorted(sr.chunks, key=lambda c: c["index"]),
                   "client": {"bytes_received": sr.bytes_received}},
        )
        job.out_store.put_bytes("run.json", json.dumps(stats, indent=2, default=str).encode())
        out.stats = {k: stats[k] for k in ("tiles_run", "chunks_skipped_nodata", "seconds",
                                            "throughput_mpx_s", "chunks_computed",
                                            "chunks_resumed", "input") if k in stats}
    if job.stage:
        out.outputs = _publish(job, out.outputs)
    if job.predict and not keep_chunks:
        job.store.clear()
    for key, name in (("classes", "classes.tif"), ("probabilities", "probabilities.tif")):
        if job.final_store.exists(name):
            out.outputs[key] = job.final_store.url_of(name)


def _write_failures(sr: _SceneRun) -> None:
    """``failures.jsonl``: every failed chunk so far, the whole file again (an object store
    has no append), at most every few seconds while the scene runs and once at its end."""
    sr.job.final_store.put_bytes("failures.jsonl", ("\n".join(sr.failures) + "\n").encode())
    sr.failures_written = time.monotonic()


def _publish(job: SceneJob, outputs: dict[str, str]) -> dict[str, str]:
    """Move the scene's staged outputs into its folder, ``run.json`` (the mark of a finished
    scene) last; returns ``outputs`` with the URLs of where they now are."""
    stage, final = job.out_store, job.final_store
    names = sorted(stage.list(), key=lambda n: n == "run.json")
    # a previous run's outputs that this run does not make would mix with its own
    made = {"classes.tif", "probabilities.tif", "instances.tif", "panoptic.tif", "run.json",
            f"{job.name}.gpkg", f"{job.name}.qgz"}
    for stale in sorted({n for m in made for n in (m, f"{m}.aux.xml")} - set(names)):
        if final.exists(stale):
            final.delete_prefix(stale)
    for name in names:
        stage.move(name, final, name)
    drop_stage(job)
    staged = stage.url.rstrip("/") + "/"
    return {k: final.url_of(v[len(staged):]) if v.startswith(staged) else v
            for k, v in outputs.items()}


def drop_stage(job: SceneJob) -> None:
    """Remove the scene's staging folder (what is left of an unfinished scene's outputs)."""
    if not job.stage:
        return
    stage = job.out_store
    if stage.is_local:
        import shutil

        shutil.rmtree(stage.local_path("x").parent, ignore_errors=True)
    else:
        stage.delete_prefix("")


@dataclass(frozen=True, slots=True)
class ScenePlan:
    """One scene to run: the job, its resume manifest, the chunks already stored."""

    job: SceneJob
    manifest: Mapping[str, Any] | None = None
    done: frozenset[tuple[int, int]] = frozenset()
    config: Mapping[str, Any] = field(default_factory=dict)


def run_scenes(
    plans: Sequence[ScenePlan],
    client: Any = None,
    *,
    in_flight: int = 2,
    progress: Progress | None = None,
    resources: dict[str, float] | None = None,
    retries: int = 1,
    keep_chunks: bool = False,
) -> tuple[list[SceneOutcome], dict[str, Any]]:
    """Run every scene's graph, at most ``in_flight`` scenes at a time.

    Returns the outcomes in the order of ``plans`` and the client's figures
    (``bytes_received``, ``tasks``). Raises the first scene's error after every
    scene has run (a failed chunk: :class:`~terraseg.errors.ChunkFailedError`).
    """
    client = LocalClient() if client is None else client
    cpu0 = time.thread_time()  # the driver's own work in this thread (not a scheduler's)
    driver = _Driver(client, progress=progress, resources=resources, retries=retries)
    runs = [_SceneRun(p.job, p.manifest, set(p.done), dict(p.config), SceneOutcome(p.job))
            for p in plans]
    queue = deque(runs)
    active = 0
    try:
        while queue and active < max(1, in_flight):
            driver.admit(queue.popleft())
            active += 1
        for fut in driver.ac:
            sr = driver.settle(fut)
            if sr is None:
                continue
            _finish_scene(sr, keep_chunks=keep_chunks)
            active -= 1
            while queue and active < max(1, in_flight):
                driver.admit(queue.popleft())
                active += 1
            if not queue and active == 0:
                break
    finally:
        if driver.live and not isinstance(client, LocalClient):
            with contextlib.suppress(Exception):  # interrupted: nothing of this run keeps running
                client.cancel(list(driver.live.values()), force=True)
    figures = {"bytes_received": driver.bytes_received, "tasks": driver.tasks,
               "driver_cpu_s": round(time.thread_time() - cpu0, 4)}
    for sr in runs:
        if sr.outcome.error is not None:
            raise sr.outcome.error
    return [sr.outcome for sr in runs], figures
