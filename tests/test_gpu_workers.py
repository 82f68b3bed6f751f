"""GPU workers on the CPU: each Dask worker takes its own device, chunks ask for a GPU resource.

No GPU is needed: torch's CUDA queries are replaced by a fake of N devices, in
this process (``monkeypatch``) and inside real LocalCluster worker processes
(``client.run(_fake_gpus, n)``). The cluster tests start real worker processes
on 127.0.0.1 and close them at the end; each is bounded by a timeout.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from terraseg.config import ClusterConfig, load_workflow
from terraseg.engine import devices
from terraseg.engine import distributed as dist
from terraseg.engine.distributed import (
    DASHBOARD_MISSING,
    PredictorOptions,
    check_worker_resources,
    chunk_resources,
    connect,
    dashboard_line,
    get_worker_predictor,
    worker_device,
    worker_info,
)
from terraseg.engine.inference import select_device
from terraseg.errors import ConfigError

HAS_BOKEH = importlib.util.find_spec("bokeh") is not None


# ---------------------------------------------------------------- fakes
def _fake_gpus(n: int) -> int:
    """Make torch in this process report ``n`` CUDA devices named 'Fake GPU <i>'."""
    torch.cuda.is_available = lambda: n > 0
    torch.cuda.device_count = lambda: n
    torch.cuda.get_device_name = lambda device=None: f"Fake GPU {device}"
    return n


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``gpus(n)``: this process sees ``n`` fake CUDA devices (undone after the test)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(devices.SPREAD_ENV, raising=False)
    return set_count


def _as_worker(monkeypatch: pytest.MonkeyPatch, name: object, *, spread: bool) -> None:
    """Pretend this process is the Dask worker ``name`` (of a terraseg LocalCluster if ``spread``)."""
    worker = types.SimpleNamespace(name=name, address=f"tcp://127.0.0.1:4{name}")
    monkeypatch.setattr(devices, "_current_worker", lambda: worker)
    if spread:
        monkeypatch.setenv(devices.SPREAD_ENV, "1")
    else:
        monkeypatch.delenv(devices.SPREAD_ENV, raising=False)


class _FakeClient:
    def __init__(self, workers: dict[str, dict[str, Any]], services: dict[str, int] | None = None,
                 scheduler_bokeh: bool | None = None) -> None:
        self._info = {"workers": workers, "services": services or {}}
        self.dashboard_link = "http://127.0.0.1:8787/status"
        self._bokeh = scheduler_bokeh

    def scheduler_info(self) -> dict[str, Any]:
        return self._info

    def run_on_scheduler(self, fn: Any) -> Any:
        if self._bokeh is None:
            raise RuntimeError("this scheduler refuses pickled functions")
        return self._bokeh


# ---------------------------------------------------------------- chunk_resources
def test_chunk_resources_per_device() -> None:
    assert chunk_resources("cpu") is None
    assert chunk_resources("auto") is None
    assert chunk_resources("mps") is None
    assert chunk_resources("cuda") == {"GPU": 1}
    assert chunk_resources("cuda:1") == {"GPU": 1}
    assert chunk_resources(" CUDA:0 ") == {"GPU": 1}


def test_chunk_resources_auto_requires_a_gpu_only_when_every_worker_has_one() -> None:
    gpu = {"resources": {"GPU": 1}}
    cpu: dict[str, Any] = {"resources": {}}
    assert chunk_resources("auto", client=_FakeClient({"a": gpu, "b": gpu})) == {"GPU": 1}
    assert chunk_resources("auto", client=_FakeClient({"a": gpu, "b": cpu})) is None
    assert chunk_resources("auto", client=_FakeClient({})) is None  # no worker yet: no constraint
    assert chunk_resources("cpu", client=_FakeClient({"a": gpu})) is None


def test_check_worker_resources_refuses_a_cluster_without_gpu_workers() -> None:
    gpu = {"resources": {"GPU": 1}}
    cpu: dict[str, Any] = {"resources": {}}
    check_worker_resources(_FakeClient({"a": cpu, "b": gpu}), {"GPU": 1})  # one is enough
    check_worker_resources(_FakeClient({}), {"GPU": 1})  # nobody connected yet: cannot tell
    check_worker_resources(_FakeClient({"a": cpu}), None)
    check_worker_resources(None, {"GPU": 1})
    with pytest.raises(ConfigError, match=r"^no worker of the Dask cluster advertises GPU=1, .*--resources GPU=1.*inference.device to auto$"):
        check_worker_resources(_FakeClient({"a": cpu, "b": {"resources": {"GPU": 0.5}}}),
                               {"GPU": 1})


# ---------------------------------------------------------------- worker_device
@pytest.mark.parametrize(("n_gpus", "expected"), [
    (2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
    (4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]),
])
def test_worker_i_of_a_local_cluster_takes_gpu_i_mod_n(
    monkeypatch: pytest.MonkeyPatch, gpus: Any, n_gpus: int, expected: list[str]
) -> None:
    gpus(n_gpus)
    got = []
    for i in range(5):
        _as_worker(monkeypatch, i, spread=True)
        got.append((worker_device("auto"), worker_device("cuda")))
    assert got == [(e, e) for e in expected]
    _as_worker(monkeypatch, "3", spread=True)  # a name given as text
    assert worker_device("auto") == expected[3]


def test_workers_outside_a_terraseg_local_cluster_take_cuda_0(
    monkeypatch: pytest.MonkeyPatch, gpus: Any
) -> None:
    gpus(4)
    for name in (0, 1, 3, "tcp://10.0.0.5:4000", None):
        _as_worker(monkeypatch, name, spread=False)
        assert worker_device("auto") == "cuda:0"
    _as_worker(monkeypatch, "gpu-node-1", spread=True)  # a name that is no index
    assert worker_device("cuda") == "cuda:0"
    monkeypatch.setattr(devices, "_current_worker", lambda: None)  # the client, synchronous runs
    monkeypatch.setenv(devices.SPREAD_ENV, "1")
    assert worker_device("auto") == "cuda:0"


def test_cuda_visible_devices_makes_cuda_0_the_workers_own_gpu(
    monkeypatch: pytest.MonkeyPatch, gpus: Any
) -> None:
    gpus(4)  # torch's count read before the variable was set: the variable wins
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    for i in range(3):
        _as_worker(monkeypatch, i, spread=True)
        assert worker_device("auto") == "cuda:0"
        assert worker_info("auto")["cuda_visible_devices"] == "2"
    # dask-cuda: worker 1 of LocalCUDACluster sees "1,0"; its first device is its GPU
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    _as_worker(monkeypatch, 1, spread=False)
    assert worker_device("cuda") == "cuda:0"
    # a spread LocalCluster started under CUDA_VISIBLE_DEVICES=2,3 spreads over those two
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    _as_worker(monkeypatch, 1, spread=True)
    assert worker_device("auto") == "cuda:1"


def test_explicit_devices_and_no_cuda(monkeypatch: pytest.MonkeyPatch, gpus: Any) -> None:
    gpus(4)
    _as_worker(monkeypatch, 1, spread=True)
    assert worker_device("cuda:3") == "cuda:3"
    assert worker_device("cpu") == "cpu"
    gpus(0)
    assert worker_device("auto") == "cpu"
    assert worker_device("cuda") == "cuda"  # left for select_device's one-line error
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device(worker_device("cuda"))


def test_worker_info_in_process(monkeypatch: pytest.MonkeyPatch, gpus: Any) -> None:
    gpus(0)
    monkeypatch.setattr(devices, "_current_worker", lambda: None)
    assert worker_info("auto") == {
        "worker": "local", "device": "cpu", "gpu": "", "cuda_visible_devices": ""}
    gpus(2)
    _as_worker(monkeypatch, 1, spread=True)
    info = worker_info("auto")
    assert info == {"worker": "tcp://127.0.0.1:41", "device": "cuda:1", "gpu": "Fake GPU 1",
                    "cuda_visible_devices": ""}


class _RecordingPredictor:
    """Stands in for TilePredictor: records the device it was asked to build on."""

    def __init__(self, net: Any, *, device: str, **kwargs: Any) -> None:
        self.device = device


def _predictor_device(model: str, device: str) -> str:
    """Runs in a (worker) process: the device get_worker_predictor builds its predictor on."""
    import terraseg.engine.inference as inference

    inference.TilePredictor = _RecordingPredictor  # type: ignore[misc,assignment]
    dist._PREDICTORS.clear()
    predictor, _ = get_worker_predictor(PredictorOptions(model=model, device=device))
    dist._PREDICTORS.clear()
    return str(predictor.device)


def test_get_worker_predictor_builds_on_the_workers_device(
    monkeypatch: pytest.MonkeyPatch, gpus: Any
) -> None:
    import terraseg.engine.inference as inference

    monkeypatch.setattr(inference, "TilePredictor", _RecordingPredictor)
    monkeypatch.setattr(dist, "_PREDICTORS", {})
    gpus(2)
    _as_worker(monkeypatch, 1, spread=True)
    assert _predictor_device("demo-semantic", "auto") == "cuda:1"
    _as_worker(monkeypatch, 0, spread=True)
    assert _predictor_device("demo-semantic", "cuda") == "cuda:0"


# ---------------------------------------------------------------- real LocalClusters
@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_local_cluster_one_worker_per_gpu_each_on_its_own_device(
    monkeypatch: pytest.MonkeyPatch, gpus: Any
) -> None:
    gpus(2)  # the client sees 2 GPUs: connect(device="cuda") starts 2 workers, not n_workers=1
    lines: list[str] = []
    with connect(type="local", n_workers=1, device="cuda", dashboard=True,
                 announce=lines.append) as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(w["resources"] == {"GPU": 1} for w in workers.values())
        assert all(w["host"] == "127.0.0.1" for w in workers.values())
        assert chunk_resources("auto", client=client) == {"GPU": 1}
        check_worker_resources(client, chunk_resources("cuda"))

        # before faking: the workers have no CUDA, 'auto' is the CPU on each
        cpu = client.run(worker_info, "auto")
        assert {i["device"] for i in cpu.values()} == {"cpu"}

        assert client.run(_fake_gpus, 2) == {a: 2 for a in workers}
        infos = client.run(worker_info, "auto")
        assert sorted(infos) == sorted(workers)
        assert len({i["worker"] for i in infos.values()}) == 2
        assert {i["worker"] for i in infos.values()} == set(workers)
        assert sorted(i["device"] for i in infos.values()) == ["cuda:0", "cuda:1"]
        assert sorted(i["gpu"] for i in infos.values()) == ["Fake GPU 0", "Fake GPU 1"]

        # inside tasks that hold the GPU resource, and for the predictor each worker builds
        for addr, info in infos.items():
            fut = client.submit(worker_info, "cuda", workers=[addr], resources={"GPU": 1},
                                pure=False)
            assert fut.result(timeout=60) == info
            fut = client.submit(_predictor_device, "demo-semantic", "auto", workers=[addr],
                                resources={"GPU": 1}, pure=False)
            assert fut.result(timeout=60) == info["device"]
    expected = DASHBOARD_MISSING if not HAS_BOKEH else "Dask dashboard: http://127.0.0.1:"
    assert len(lines) == 1 and lines[0].startswith(expected)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_local_cluster_auto_spreads_and_logs_the_dashboard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="terraseg.engine.distributed")
    with connect(type="local", n_workers=2, dashboard=True) as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info()["workers"]
        assert all(not w["resources"] for w in workers.values())  # auto: no GPU resource
        assert chunk_resources("auto", client=client) is None
        with pytest.raises(ConfigError, match="advertises GPU=1"):
            check_worker_resources(client, chunk_resources("cuda"))
        client.run(_fake_gpus, 4)
        infos = client.run(worker_info, "auto")
        assert sorted(i["device"] for i in infos.values()) == ["cuda:0", "cuda:1"]
    said = [r.getMessage() for r in caplog.records if "Dask dashboard" in r.getMessage()]
    assert len(said) == 1
    if not HAS_BOKEH:
        assert said == [DASHBOARD_MISSING]


def test_no_dashboard_no_line(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    with connect(type="synchronous", dashboard=True, announce=lines.append) as client:
        assert client is None
    assert lines == []


# ---------------------------------------------------------------- local-cuda
def test_local_cuda_without_dask_cuda_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as err, connect(type="local-cuda"):
        pass
    assert str(err.value) == (
        "cluster type local-cuda needs dask-cuda: pip install dask-cuda (Linux, NVIDIA GPUs)")
    assert isinstance(err.value, ValueError)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_local_cuda_starts_dask_cuda_on_127_0_0_1(
    monkeypatch: pytest.MonkeyPatch, gpus: Any
) -> None:
    from distributed import LocalCluster

    made: list[dict[str, Any]] = []

    class FakeLocalCUDACluster(LocalCluster):
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(  # type: ignore[no-untyped-call]
                n_workers=1, processes=False, protocol="tcp://", **kwargs)

    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = FakeLocalCUDACluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    gpus(2)
    with connect(type="local-cuda", threads_per_worker=1, device="cuda") as client:
        (w,) = client.scheduler_info()["workers"].values()
        assert w["resources"] == {"GPU": 1}
        (info,) = client.run(worker_info, "cuda").values()
    assert made == [{"host": "127.0.0.1", "threads_per_worker": 1, "memory_limit": "auto",
                     "dashboard_address": None, "resources": {"GPU": 1}}]
    assert info["device"] == "cuda:0"  # dask-cuda workers: their own GPU is the first visible


# ---------------------------------------------------------------- dashboard line
def test_dashboard_line(monkeypatch: pytest.MonkeyPatch) -> None:
    link = "Dask dashboard: http://127.0.0.1:8787/status"
    monkeypatch.setattr(dist, "_has_bokeh", lambda: True)
    assert dashboard_line(_FakeClient({}, {"dashboard": 8787}), local=True) == link
    assert dashboard_line(_FakeClient({}, {}), local=True) == DASHBOARD_MISSING
    monkeypatch.setattr(dist, "_has_bokeh", lambda: False)
    assert dashboard_line(_FakeClient({}, {"dashboard": 8787}), local=True) == DASHBOARD_MISSING
    # a remote scheduler answers for itself; one that refuses to answer gets the link
    remote = dashboard_line(_FakeClient({}, {"dashboard": 8787}, scheduler_bokeh=True), local=False)
    assert remote == link
    no_bokeh = _FakeClient({}, {"dashboard": 8787}, scheduler_bokeh=False)
    assert dashboard_line(no_bokeh, local=False) == DASHBOARD_MISSING
    assert dashboard_line(_FakeClient({}, {"dashboard": 8787}), local=False) == link


# ---------------------------------------------------------------- config
def test_cluster_config_new_fields() -> None:
    assert ClusterConfig().dashboard is True
    assert ClusterConfig(type="local-cuda").type == "local-cuda"
    assert ClusterConfig(type="local", dashboard=False).dashboard is False
    with pytest.raises(ValueError, match="local-cuda"):
        ClusterConfig(type="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dashboard"):
        ClusterConfig(dashboard="sometimes")  # type: ignore[arg-type]


def test_workflow_yaml_with_local_cuda(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("inputs: {paths: [a.tif]}\ninference: {device: cuda}\n"
                  "cluster: {type: local-cuda, dashboard: false}\n")
    loaded = load_workflow(wf)
    assert loaded.cluster.type == "local-cuda" and loaded.cluster.dashboard is False
    assert chunk_resources(loaded.inference.device) == {"GPU": 1}
    wf.write_text("inputs: {paths: [a.tif]}\ncluster: {type: cuda-local}\n")
    with pytest.raises(ConfigError, match=r"cluster\.type: .*'local-cuda'"):
        load_workflow(wf)
