"""A TLS Dask cluster on 127.0.0.1: certificates made in the test, mutual TLS, a real run.

A throw-away CA signs one certificate (SAN IP:127.0.0.1) that the scheduler,
the worker and the client all present, as ``dask``'s own
``Security.temporary()`` does. The CA and certificate are made with the
``openssl`` command line tool (``cryptography``, which ``Security.temporary()``
needs, is not a terraseg dependency); the test is skipped without ``openssl``.
Scheduler and worker are started with the ``dask`` CLI of this environment,
exactly as on a cluster, and are stopped in ``finally`` whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from badinput.make_corpus import good_scene

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

DASK = str(Path(sys.executable).with_name("dask"))
OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path
    cert: Path
    key: Path

    def as_config(self) -> dict[str, str]:
        return {"ca_file": str(self.ca_file), "cert": str(self.cert), "key": str(self.key)}

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path, name: str = "") -> TLSFiles:
    """A CA (``<name>ca.pem``) and a key/certificate it signed, for 127.0.0.1, valid 2 days."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = f"{name}ca.key", f"{name}ca.pem"
    key, csr, cert = f"{name}key.pem", f"{name}req.csr", f"{name}cert.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", f"/CN=terraseg test CA {name}".strip(),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1", cwd=folder)
    ext = folder / f"{name}ext.cnf"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext.name, cwd=folder)
    return TLSFiles(folder / ca, folder / cert, folder / key)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@dataclass(frozen=True)
class TLSCluster:
    address: str  # tls://127.0.0.1:PORT
    tls: TLSFiles
    folder: Path


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    """A TLS-only ``dask scheduler`` and one ``dask worker`` on 127.0.0.1."""
    if OPENSSL is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    tls = make_certificates(folder / "certs")
    sched_file = folder / "scheduler.json"
    logs = {n: open(folder / f"{n}.log", "wb") for n in ("scheduler", "worker")}  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file), *tls.cli_args()],
            cwd=folder, stdout=logs["scheduler"], stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ))
        deadline = time.monotonic() + 90
        while not sched_file.exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail("TLS scheduler did not start:\n"
                            + (folder / "scheduler.log").read_text())
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but be safe
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:"), address
        procs.append(subprocess.Popen(
            [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--nworkers", "1", "--no-nanny", "--no-dashboard", "--memory-limit", "4GB",
             "--death-timeout", "60", *tls.cli_args()],
            cwd=folder, stdout=logs["worker"], stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ))
        yield TLSCluster(address, tls, folder)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs.values():
            f.close()


@contextlib.contextmanager
def _client(cluster: TLSCluster) -> Iterator[object]:
    from terraseg.engine.distributed import connect

    with connect(type="address", address=cluster.address, tls=cluster.tls.as_config()) as client:
        client.wait_for_workers(1, timeout=90)
        yield client


def test_tls_client_runs_a_task(tls_cluster: TLSCluster) -> None:
    with _client(tls_cluster) as client:
        assert client.submit(lambda: 1, pure=False).result(timeout=60) == 1  # type: ignore[attr-defined]
        info = client.scheduler_info()  # type: ignore[attr-defined]
        assert info["address"] == tls_cluster.address
        assert all(w.startswith("tls://127.0.0.1:") for w in info["workers"])


def test_run_workflow_over_tls_matches_synchronous(tls_cluster: TLSCluster, tmp_path: Path) -> None:
    from terraseg.config import Workflow
    from terraseg.engine.batch import run_workflow

    scene = good_scene(tmp_path)
    base = {
        "name": "tls-smoke",
        "inputs": {"paths": [str(scene)]},
        "models": {"semantic": "cheap"},
        "tiling": {"tile_px": 64, "overlap_px": 16, "chunk_px": 128},
        "inference": {"device": "cpu"},
        "stages": ["predict"],
        "base_dir": str(tmp_path),
    }
    tls_wf = Workflow.model_validate(base | {"cluster": {
        "type": "address", "address": tls_cluster.address, "tls": tls_cluster.tls.as_config()}})
    sync_wf = Workflow.model_validate(base | {"cluster": {"type": "synchronous"}})
    remote = run_workflow(tls_wf, out=tmp_path / "tls")
    local = run_workflow(sync_wf, out=tmp_path / "sync")
    (r,), (s,) = remote.scenes, local.scenes
    assert r.stats["chunks_computed"] == s.stats["chunks_computed"] > 1
    assert r.stats["tiles_run"] == s.stats["tiles_run"] > 0
    with rasterio.open(r.outputs["classes"]) as a, rasterio.open(s.outputs["classes"]) as b:
        assert a.crs == b.crs and a.transform == b.transform
        np.testing.assert_array_equal(a.read(1), b.read(1))
    with _client(tls_cluster) as client:  # the chunks ran on the TLS worker: it built the model

        def models_built() -> list[str]:
            from terraseg.engine.distributed import _PREDICTORS

            return [opts.model for opts in _PREDICTORS]

        built = client.run(models_built)  # type: ignore[attr-defined]
        assert list(built.values()) == [["cheap"]], built


def test_plain_tcp_and_foreign_ca_are_refused(tls_cluster: TLSCluster, tmp_path: Path) -> None:
    from distributed import Client
    from distributed.security import Security

    tcp = tls_cluster.address.replace("tls://", "tcp://")
    t0 = time.monotonic()
    with pytest.raises(OSError):  # TimeoutError/CommClosedError: no TLS handshake, no client
        Client(tcp, timeout="4s")
    assert time.monotonic() - t0 < 60
    other = make_certificates(tmp_path / "other", name="other-")
    foreign = Security(tls_ca_file=str(other.ca_file), tls_client_cert=str(other.cert),
                       tls_client_key=str(other.key), require_encryption=True)
    with pytest.raises(OSError):  # certificate verify failed, both ways
        Client(tls_cluster.address, security=foreign, timeout="4s")
