"""A real Dask cluster for tests: `dask scheduler` + `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


@contextmanager
def real_dask_cluster(
    tmp_path: Path, n_workers: int = 2, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Start a scheduler and ``n_workers`` single-threaded workers; always stop them.

    Yields the scheduler address and the processes (scheduler first). ``env`` is
    added to the workers' environment (e.g. an S3 endpoint).
    """
    sched_file = tmp_path / "scheduler.json"
    full_env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
                "OMP_NUM_THREADS": "1", **(env or {})}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env,
        ))
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.2)
        time.sleep(0.5)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(n_workers):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--no-nanny", "--death-timeout", "60"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env,
            ))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=90)
        yield address, procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def make_slow_model(folder: Path) -> Path:
    """A randomly initialised resnet18 U-Net saved as safetensors + card: slow enough on the
    CPU (~0.1-0.3 s per 256² chunk) that a run can be interrupted part-way."""
    import segmentation_models_pytorch as smp
    import torch

    from terraseg.models.card import Architecture, ModelCard
    from terraseg.models.loading import save_model

    torch.manual_seed(0)
    kwargs = {"encoder_name": "resnet18", "in_channels": 3, "classes": 3}
    net = smp.Unet(encoder_weights=None, **kwargs).eval()
    card = ModelCard(
        name="slow-unet", architecture=Architecture(library="smp", name="Unet", kwargs=kwargs)
    )
    weights, _ = save_model(net, card, folder / "slow-unet")
    return weights
