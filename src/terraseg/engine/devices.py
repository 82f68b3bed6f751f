"""Which device each Dask worker runs its model on, and which resources a chunk task asks for.

A worker learns its GPU in one of two ways:

- **From the environment it was started in.** ``CUDA_VISIBLE_DEVICES=3 dask worker ...``,
  ``dask cuda worker`` and dask-cuda's ``LocalCUDACluster`` (``cluster: {type: local-cuda}``)
  give each worker process its own visible device list whose first entry is its GPU,
  so such a worker runs on ``cuda:0``.
- **From its place in a LocalCluster that :func:`terraseg.engine.distributed.connect`
  started.** Those workers all see every GPU; ``connect`` sets
  :data:`SPREAD_ENV` in their environment, and worker *i* (LocalCluster names its
  workers 0, 1, ...) runs on ``cuda:(i % n_gpus)``.

Everything else (the client process, the synchronous scheduler, a plain
``dask worker`` on a multi-GPU host without ``CUDA_VISIBLE_DEVICES``) uses ``cuda:0``
for ``auto``/``cuda``. An explicit ``cuda:N`` is always taken as written.
Torch is imported only when a CUDA question is actually asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from terraseg.errors import ConfigError

__all__ = [
    "SPREAD_ENV",
    "check_worker_resources",
    "chunk_resources",
    "visible_gpu_count",
    "worker_device",
    "worker_info",
]

SPREAD_ENV = "TERRASEG_SPREAD_GPUS"
"""``"1"`` in the workers of a LocalCluster started by ``connect``: spread them over the GPUs."""

_CUDA_NAMES = ("auto", "cuda")


def _visible_list() -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES``, or ``None`` when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v for v in (s.strip() for s in value.split(",")) if v]


def visible_gpu_count() -> int:
    """How many CUDA devices this process can use (0 without CUDA).

    torch's count, capped by the length of ``CUDA_VISIBLE_DEVICES`` when that is
    set (torch reads the variable only when CUDA first initialises, so a value
    set later would otherwise be ignored).
    """
    import torch

    if not torch.cuda.is_available():
        return 0
    count = int(torch.cuda.device_count())
    visible = _visible_list()
    return count if visible is None else min(count, len(visible))


def _current_worker() -> Any:
    """The ``distributed.Worker`` of this process, or ``None`` outside a worker.

    ``get_worker()`` answers inside a task; ``client.run`` functions run outside
    a task, so a process holding exactly one worker (every Nanny-started one)
    answers with that worker.
    """
    try:
        from distributed.worker import Worker, get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_worker()
    except ValueError:
        pass
    workers = list(Worker._instances)
    return workers[0] if len(workers) == 1 else None


def _spread_index() -> int | None:
    """This worker's index in a LocalCluster started by ``connect``, else ``None``."""
    if os.environ.get(SPREAD_ENV) != "1":
        return None
    worker = _current_worker()
    name = getattr(worker, "name", None)
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if isinstance(name, str) and name.isdigit():
        return int(name)
    return None


def worker_device(requested: str) -> str:
    """The torch device this process (a Dask worker, or the client) runs the model on.

    Parameters
    ----------
    requested
        The workflow's ``inference.device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
        or ``mps``.

    Returns
    -------
    str
        ``cpu``, ``mps``, or ``cuda:N``. ``cpu``, ``mps`` and ``cuda:N`` come back as
        asked (``terraseg.engine.inference.select_device`` checks that they exist).
        ``auto`` is ``cpu`` without CUDA. ``auto`` and ``cuda`` on a CUDA machine:

        - worker *i* of a LocalCluster that ``connect`` started (:data:`SPREAD_ENV`
          set, integer worker name) takes ``cuda:(i % n)``, ``n`` the visible GPUs;
        - anything else takes ``cuda:0``: with ``CUDA_VISIBLE_DEVICES`` set (by hand,
          by ``dask cuda worker`` or by ``LocalCUDACluster``) that is the first
          device the variable names, the worker's own GPU.

        ``cuda`` without CUDA comes back as ``cuda``, so that ``select_device``
        raises its one-line error.

    Examples
    --------
    >>> worker_device("cpu")
    'cpu'
    >>> worker_device("cuda:1")
    'cuda:1'
    """
    name = requested.strip().lower()
    if name not in _CUDA_NAMES:
        return name
    n_gpus = visible_gpu_count()
    if n_gpus == 0:
        return "cpu" if name == "auto" else "cuda"
    index = _spread_index()
    return f"cuda:{0 if index is None else index % n_gpus}"


def worker_info(device: str = "auto") -> dict[str, str]:
    """Who runs here and on what: call it on a worker (``client.run``, inside a task) or in-process.

    Parameters
    ----------
    device
        The workflow's ``inference.device``; the reported device is
        :func:`worker_device` of it, which is the device
        :func:`terraseg.engine.distributed.get_worker_predictor` builds this
        process's predictor on.

    Returns
    -------
    dict
        ``worker``: the worker's address, or ``local`` outside a Dask worker;
        ``device``: e.g. ``cuda:1`` or ``cpu``; ``gpu``: the CUDA device's name
        (``''`` on the CPU or when the driver cannot tell); ``cuda_visible_devices``:
        the variable as this process sees it (``''`` when unset).

    Examples
    --------
    >>> sorted(worker_info("cpu"))
    ['cuda_visible_devices', 'device', 'gpu', 'worker']
    """
    worker = _current_worker()
    address = str(getattr(worker, "address", "") or "local") if worker is not None else "local"
    dev = worker_device(device)
    gpu = ""
    if dev.startswith("cuda:"):
        import torch

        try:
            gpu = str(torch.cuda.get_device_name(int(dev.split(":", 1)[1])))
        except (RuntimeError, AssertionError, ValueError):  # no driver, or index out of range
            gpu = ""
    return {
        "worker": address,
        "device": dev,
        "gpu": gpu,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def _all_workers_have_gpu(client: Any) -> bool:
    workers: Mapping[str, Any] = client.scheduler_info().get("workers", {})
    return bool(workers) and all(
        float((w.get("resources") or {}).get("GPU", 0)) >= 1 for w in workers.values()
    )


def chunk_resources(device: str, *, client: Any = None) -> dict[str, float] | None:
    """Dask worker resources a chunk task requests for ``device``.

    Parameters
    ----------
    device
        The workflow's ``inference.device``.
    client
        Optional ``distributed.Client``; only ``auto`` looks at it.

    Returns
    -------
    dict or None
        ``{"GPU": 1}`` for ``cuda`` and ``cuda:N``: each chunk holds one GPU, so a
        worker started with ``--resources GPU=1`` (as every worker of
        ``connect(device="cuda")`` and of ``local-cuda`` is) runs one chunk at a
        time on its GPU, whatever its thread count. ``None`` (no constraint) for
        ``cpu`` and ``mps``.

        ``auto`` means "a GPU where the worker has one, else the CPU", so it cannot
        require a GPU resource: on a cluster with CPU-only workers (or with
        workers started without ``--resources``) such a task would wait forever.
        ``auto`` therefore asks for ``{"GPU": 1}`` only when ``client`` is given and
        every worker connected now advertises a GPU resource, and for nothing
        otherwise.

    Examples
    --------
    >>> chunk_resources("cuda:1")
    {'GPU': 1}
    >>> chunk_resources("auto") is None
    True
    """
    name = device.strip().lower()
    if name == "cuda" or name.startswith("cuda:"):
        return {"GPU": 1}
    if name == "auto" and client is not None and _all_workers_have_gpu(client):
        return {"GPU": 1}
    return None


def check_worker_resources(client: Any, resources: Mapping[str, float] | None) -> None:
    """Refuse a run whose chunk tasks ask for resources no connected worker has.

    Dask keeps such a task waiting forever (a ``dask worker`` started without
    ``--resources GPU=1`` advertises no GPU), so check once the cluster is up.
    Nothing is checked without resources, without a client, or while no worker
    has connected yet (workers of an adaptive cluster may still be joining).

    Raises
    ------
    ConfigError
        Workers are connected and none advertises every resource in ``resources``.
    """
    if not resources or client is None:
        return
    workers: Mapping[str, Any] = client.scheduler_info().get("workers", {})
    if not workers:
        return
    for w in workers.values():
        have = w.get("resources") or {}
        if all(float(have.get(k, 0)) >= v for k, v in resources.items()):
            return
    wanted = ",".join(f"{k}={v:g}" for k, v in resources.items())
    raise ConfigError(
        f"no worker of the Dask cluster advertises {wanted}, which the chunk tasks of "
        f"inference.device cuda need; start workers with `dask worker ... --resources "
        f"{wanted}` (one per GPU), use cluster type local or local-cuda, or set "
        "inference.device to auto",
        resources=dict(resources),
    )
