"""Dask plumbing: clients and clusters, and a chunk runner that maps pipeline work onto workers.

No segmentation logic lives here: a task calls :func:`terraseg.engine.pipeline.run_chunk`
for one chunk on a worker, which builds (and caches) its own model once, and
returns the small :class:`~terraseg.io.chunkstore.ChunkOutput`. The client stores
outputs as they arrive, so a worker that dies only costs its running chunk
(Dask reschedules it) and an interrupted client resumes with ``--resume``.
The same code runs on a laptop's ``LocalCluster`` and on a cluster started by
``dask scheduler`` / dask-jobqueue / dask-kubernetes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from terraseg.core.grid import Chunk, ChunkGrid
from terraseg.errors import ConfigError
from terraseg.io.scene import Scene

__all__ = [
    "DaskRunner",
    "PredictorOptions",
    "connect",
    "get_worker_predictor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PredictorOptions:
    """What a worker needs to build its own model and predictor (cheap to pickle)."""

    model: str | None
    device: str = "auto"
    batch_size: int = 8
    amp: str = "auto"
    backend: str = "torch"
    instance: str | None = None
    tta: str = "none"

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("PredictorOptions", self.model, self.device, self.batch_size, self.amp,
                self.backend, self.instance, self.tta)


_PREDICTORS: dict[PredictorOptions, Any] = {}
_PREDICTORS_LOCK = threading.Lock()


def get_worker_predictor(opts: PredictorOptions) -> tuple[Any, Any]:
    """``(TilePredictor, ModelSpec)`` for ``opts``, built once per worker process.

    Every thread of the worker (``--nthreads``, ``threads_per_worker``) shares the
    one predictor, hence one copy of the weights; that is safe because the
    predictor keeps its batch buffers per thread.
    """
    with _PREDICTORS_LOCK:
        if opts not in _PREDICTORS:
            from terraseg.engine.inference import TilePredictor
            from terraseg.models.combine import resolve_models

            net, spec = resolve_models(opts.model, opts.instance)
            predictor = TilePredictor(
                net, device=opts.device, batch_size=opts.batch_size, amp=opts.amp,  # type: ignore[arg-type]
                activation=spec.activation, backend=opts.backend,  # type: ignore[arg-type]
                tta=opts.tta,  # type: ignore[arg-type]
            )
            _PREDICTORS[opts] = (predictor, spec)
        return _PREDICTORS[opts]  # type: ignore[no-any-return]


def _chunk_task(
    scene: Scene,
    grid: ChunkGrid,
    index: tuple[int, int],
    opts: PredictorOptions,
    ramp: str,
    pad: str,
    with_probs: bool,
) -> Any:
    """Runs on a worker: one chunk through the pipeline."""
    from terraseg.engine.pipeline import run_chunk

    predictor, spec = get_worker_predictor(opts)
    chunk = grid.chunk(*index)
    return run_chunk(scene, chunk, grid, predictor, spec, ramp=ramp, pad=pad,  # type: ignore[arg-type]
                     with_probs=with_probs)


class DaskRunner:
    """A :data:`~terraseg.engine.pipeline.ChunkRunner` that runs chunks as Dask tasks.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    scene, grid
        What to compute (both pickle cheaply: paths and numbers).
    opts
        How workers build their model.
    resources
        Worker resources per task, e.g. ``{"GPU": 1}`` for workers started with
        ``--resources GPU=1`` (one model per GPU). ``None``: no constraint.
    retries
        How many times Dask retries a chunk whose task raised (a worker that
        dies is handled by Dask itself, without counting as a retry).
    token
        Goes into every task key, ``terraseg-chunk-{scene}-{token}-{index}``: the
        run's :func:`~terraseg.io.manifest.manifest_token` (model weights, card,
        tiling, grid and scene file), so a scheduler that still holds a chunk of
        another configuration never hands it back for this one. ``None``: a
        token of the scene path, grid, predictor options, ramp, padding and
        probabilities.
    """

    def __init__(
        self,
        client: Any,
        scene: Scene,
        grid: ChunkGrid,
        opts: PredictorOptions,
        *,
        ramp: Literal["cosine", "linear", "none"] = "cosine",
        pad: Literal["reflect", "nodata"] = "reflect",
        with_probs: bool = False,
        resources: dict[str, float] | None = None,
        retries: int = 1,
        token: str | None = None,
    ) -> None:
        self.client = client
        self.scene = scene
        self.grid = grid
        self.opts = opts
        self.ramp = ramp
        self.pad = pad
        self.with_probs = with_probs
        self.resources = resources
        self.retries = retries
        if token is None:
            from dask.base import tokenize

            token = tokenize(scene.path, grid, opts, ramp, pad, with_probs)[:16]
        self.token = token

    def __call__(self, chunks: Sequence[Chunk]) -> Iterator[Any]:
        from distributed import as_completed

        from terraseg.engine.pipeline import ChunkFailure

        if not chunks:
            return
        # scatter the small shared arguments once instead of pickling them per task
        scene_f, grid_f = self.client.scatter([self.scene, self.grid], broadcast=True)
        futures = {}
        for chunk in chunks:
            fut = self.client.submit(
                _chunk_task, scene_f, grid_f, chunk.index, self.opts, self.ramp, self.pad,
                self.with_probs, key=f"terraseg-chunk-{self.scene.path}-{self.token}-{chunk.index}",
                resources=self.resources, retries=self.retries, pure=False,
            )
            futures[fut] = chunk
        try:
            for fut in as_completed(futures):
                chunk = futures[fut]
                if fut.status == "error":
                    exc = fut.exception()
                    tb = "".join(traceback.format_exception(exc)) if exc else ""
                    yield ChunkFailure(chunk.index, chunk.core, f"{type(exc).__name__}: {exc}", tb)
                else:
                    yield fut.result()
                fut.release()
        finally:
            for fut in futures:
                fut.cancel()


@contextlib.contextmanager
def connect(
    *,
    type: Literal["local", "address", "synchronous"] = "local",  # noqa: A002
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    tls: dict[str, str] | None = None,
    dashboard: bool = False,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for the configured cluster (``None`` for synchronous).

    ``local`` starts a ``LocalCluster`` of processes bound to 127.0.0.1 and
    stops it on exit; ``address`` connects to a running scheduler (TLS with
    ``tls={"ca_file", "cert", "key"}``) and leaves it running.
    """
    if type == "synchronous":
        yield None
        return
    from distributed import Client, LocalCluster

    if type == "local":
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
            host="127.0.0.1", dashboard_address=":0" if dashboard else None,
            memory_limit=memory_limit,
        )
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if not address:
        raise ConfigError("cluster type 'address' needs an address such as tcp://host:8786")
    security = None
    if tls is not None:
        from distributed.security import Security

        security = Security(
            tls_ca_file=tls["ca_file"], tls_client_cert=tls["cert"], tls_client_key=tls["key"],
            require_encryption=True,
        )
    try:
        client = Client(address, security=security, timeout="20s")
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at '{address}': {exc}; start it "
            "(`dask scheduler`) or fix --scheduler / cluster.address",
            address=address,
        ) from exc
    try:
        yield client
    finally:
        client.close()
