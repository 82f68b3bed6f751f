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
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from terraseg.engine.devices import (
    SPREAD_ENV,
    check_worker_resources,
    chunk_resources,
    visible_gpu_count,
    worker_device,
    worker_info,
)
from terraseg.errors import ConfigError

__all__ = [
    "DASHBOARD_MISSING",
    "PredictorOptions",
    "check_worker_resources",
    "chunk_resources",
    "connect",
    "dashboard_line",
    "get_worker_predictor",
    "worker_device",
    "worker_info",
]

DASHBOARD_MISSING = "Dask dashboard: not available (pip install bokeh)"

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

    def describe(self) -> str:
        """How ``run.json`` names the predictor."""
        models = " + ".join(m for m in (self.model, self.instance) if m)
        return (f"{models} (backend={self.backend}, device={self.device}, "
                f"batch_size={self.batch_size}, amp={self.amp}, tta={self.tta})")


_PREDICTORS: dict[PredictorOptions, tuple[tuple[object, ...], Any, Any]] = {}
_PREDICTORS_LOCK = threading.Lock()


def _files_stamp(model: str | None) -> tuple[object, ...]:
    """Size and modification time of a local model's files (weights, card, ...), so that a
    model rewritten at the same path (retrained, or its card's filters re-chosen) is loaded
    again instead of served stale from the cache. Bundled names and URLs stamp as ``()``."""
    if not model or "://" in model:
        return ()
    path = Path(model)
    if not path.is_file():
        return ()
    stem = path.name.split(".", 1)[0]
    stamps: list[object] = []
    for one in sorted(path.parent.glob(f"{stem}.*")):
        try:
            st = one.stat()
        except OSError:
            continue
        stamps.append((one.name, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def get_worker_predictor(opts: PredictorOptions) -> tuple[Any, Any]:
    """``(TilePredictor, ModelSpec)`` for ``opts``, built once per worker process.

    Every thread of the worker (``--nthreads``, ``threads_per_worker``) shares the
    one predictor, hence one copy of the weights; that is safe because the
    predictor keeps its batch buffers per thread. The predictor runs on
    :func:`~terraseg.engine.devices.worker_device` of ``opts.device``: this
    worker's own GPU for ``auto``/``cuda``. A local model file whose weights or
    card changed since it was built is built again.
    """
    stamp = (_files_stamp(opts.model), _files_stamp(opts.instance))
    with _PREDICTORS_LOCK:
        cached = _PREDICTORS.get(opts)
        if cached is None or cached[0] != stamp:
            from terraseg.engine.inference import TilePredictor
            from terraseg.models.combine import resolve_models

            net, spec = resolve_models(opts.model, opts.instance)
            predictor = TilePredictor(
                net, device=worker_device(opts.device), batch_size=opts.batch_size, amp=opts.amp,  # type: ignore[arg-type]
                activation=spec.activation, backend=opts.backend,  # type: ignore[arg-type]
                tta=opts.tta,  # type: ignore[arg-type]
            )
            cached = _PREDICTORS[opts] = (stamp, predictor, spec)
        return cached[1], cached[2]


def _local_workers(n_workers: int, device: str) -> tuple[int, dict[str, float] | None]:
    """``(workers, resources per worker)`` of a LocalCluster for ``device``.

    ``cuda``: one worker per visible GPU, each advertising ``GPU=1``; ``cuda:N``: one
    worker (on GPU N) advertising ``GPU=1``; otherwise ``n_workers`` without resources.
    """
    name = device.strip().lower()
    if name == "cuda":
        n_gpus = visible_gpu_count()
        if n_gpus == 0:
            raise ConfigError(
                "device 'cuda' requested but CUDA is not available; set inference.device "
                "to cpu or auto", device=device,
            )
        return n_gpus, {"GPU": 1}
    if name.startswith("cuda:"):
        return 1, {"GPU": 1}
    return n_workers, None


def _start_cluster(
    type: str,  # noqa: A002
    *,
    n_workers: int,
    threads_per_worker: int,
    memory_limit: str,
    dashboard: bool,
    device: str,
) -> Any:
    """A LocalCluster or dask-cuda LocalCUDACluster, bound to 127.0.0.1."""
    dashboard_address = "127.0.0.1:0" if dashboard else None
    if type == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise ConfigError(
                "cluster type local-cuda needs dask-cuda: pip install dask-cuda "
                "(Linux, NVIDIA GPUs)"
            ) from exc
        # one worker per visible GPU, each with CUDA_VISIBLE_DEVICES starting at its own
        return LocalCUDACluster(
            host="127.0.0.1", threads_per_worker=threads_per_worker,
            memory_limit=memory_limit, dashboard_address=dashboard_address,
            resources={"GPU": 1},
        )
    from distributed import LocalCluster

    workers, resources = _local_workers(n_workers, device)
    return LocalCluster(
        n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
        host="127.0.0.1", dashboard_address=dashboard_address, memory_limit=memory_limit,
        resources=resources, env={SPREAD_ENV: "1"},
    )


def _remote_has_bokeh(client: Any) -> bool:
    """Whether the scheduler of ``client`` can serve the dashboard (True when it cannot say)."""
    try:
        return bool(client.run_on_scheduler(_has_bokeh))
    except Exception:  # noqa: BLE001 - a scheduler may refuse pickled functions
        return True


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def dashboard_line(client: Any, *, local: bool) -> str:
    """One line about the Dask dashboard of ``client``'s scheduler.

    ``Dask dashboard: <url>`` when the scheduler serves one, else
    :data:`DASHBOARD_MISSING` (the dashboard needs bokeh where the scheduler runs:
    in this process for ``local`` clusters).
    """
    services = (client.scheduler_info() or {}).get("services", {})
    if "dashboard" not in services:
        return DASHBOARD_MISSING
    has_bokeh = _has_bokeh() if local else _remote_has_bokeh(client)
    if not has_bokeh:
        return DASHBOARD_MISSING
    return f"Dask dashboard: {client.dashboard_link}"


def _say(announce: Callable[[str], None] | None, line: str) -> None:
    if announce is None:
        log.info("%s", line)
    else:
        announce(line)


@contextlib.contextmanager
def connect(
    *,
    type: Literal["local", "local-cuda", "address", "synchronous"] = "local",  # noqa: A002
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    tls: dict[str, str] | None = None,
    dashboard: bool = False,
    device: str = "auto",
    announce: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for the configured cluster (``None`` for synchronous).

    Parameters
    ----------
    type
        ``local`` starts a ``LocalCluster`` of processes bound to 127.0.0.1 and
        stops it on exit. Its workers spread over the visible GPUs (worker *i*
        on ``cuda:(i % n)``, see :func:`~terraseg.engine.devices.worker_device`);
        with ``device="cuda"`` it starts one worker per visible GPU instead of
        ``n_workers``, with ``device="cuda:N"`` one worker, each advertising the
        resource ``GPU=1``. ``local-cuda`` starts dask-cuda's
        ``LocalCUDACluster`` (one worker per visible GPU, each with its own
        ``CUDA_VISIBLE_DEVICES``, advertising ``GPU=1``; ``n_workers`` is not
        used). ``address`` connects to a running scheduler (TLS with
        ``tls={"ca_file", "cert", "key"}``) and leaves it running.
    dashboard
        Local clusters: serve the Dask dashboard on 127.0.0.1 (a free port).
        All types: announce the dashboard when the cluster starts, one line,
        ``Dask dashboard: http://...`` or :data:`DASHBOARD_MISSING` when bokeh is
        not installed where the scheduler runs.
    device
        The workflow's ``inference.device`` (see above).
    announce
        Called with that one line; ``None`` logs it at INFO on this module's
        logger.

    Raises
    ------
    ConfigError
        ``local-cuda`` without dask-cuda installed; ``device="cuda"`` on a local
        cluster without CUDA; an unreachable scheduler.
    """
    if type == "synchronous":
        yield None
        return
    from distributed import Client

    if type in ("local", "local-cuda"):
        cluster = _start_cluster(
            type, n_workers=n_workers, threads_per_worker=threads_per_worker,
            memory_limit=memory_limit, dashboard=dashboard, device=device,
        )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        try:
            if dashboard:
                _say(announce, dashboard_line(client, local=True))
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
        if dashboard:
            _say(announce, dashboard_line(client, local=False))
        yield client
    finally:
        client.close()
