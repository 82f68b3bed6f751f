"""The batch driver (`terraseg.engine.cluster`): workers write their own outputs, the client gets
small results, scenes in flight are bounded, and an s3:// output on a loopback moto server survives
a killed worker and a killed, resumed client. Every process and server started here is stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml

from terraseg.config import load_workflow
from terraseg.engine.batch import run_workflow
from terraseg.errors import ChunkFailedError

sys.path.insert(0, str(Path(__file__).parent))
from dask_helpers import make_slow_model, real_dask_cluster  # noqa: E402
from remote_helpers import moto_s3  # noqa: E402

BIN = Path(sys.executable).parent
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Runs in this process on one intra-op thread, as a Dask worker's nanny sets them: torch's
    float sums differ in the last bits with the thread count, which can flip a class where two
    scores tie. Byte-identical outputs are promised for the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cities(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small synthetic cities (buildings and roads, so every vector layer is filled)."""
    from terraseg.synthetic import make_city

    d = tmp_path_factory.mktemp("cities")
    return [make_city(d / f"{n}.tif", size_px=s, seed=seed).image
            for n, s, seed in (("a", 640, 3), ("b", 512, 4))]


def workflow(tmp: Path, scenes: list[Path], out: str, **over: object) -> Path:
    data: dict[str, object] = {
        "version": 1, "name": "cluster-test",
        "inputs": {"paths": [str(s) for s in scenes]},
        "models": {"semantic": "cheap"},
        "tiling": {"tile_px": 256, "overlap_px": 32, "chunk_px": 256},
        "inference": {"device": "cpu", "batch_size": 4},
        "stages": ["predict", "vectorize", "export"],
        "outputs": {"dir": out, "formats": ["gpkg"], "probabilities": True},
        "cluster": {"type": "synchronous"},
    }
    data.update(over)
    path = tmp / f"wf-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def classes_of(folder: Path, scene: str) -> np.ndarray:
    with rasterio.open(folder / scene / "classes.tif") as ds:
        return ds.read(1)


def buildings_of(folder: Path, scene: str) -> gpd.GeoDataFrame:
    gdf = gpd.read_file(folder / scene / f"{scene}.gpkg", layer="buildings")
    return gdf.sort_values("building_id").reset_index(drop=True)


def project_of(folder: Path, scene: str) -> list[tuple[str, str]]:
    """The ``.qgz``'s layers, in order: (name, file name of the data source)."""
    import xml.etree.ElementTree as ET
    import zipfile

    qgz = folder / scene / f"{scene}.qgz"
    if not qgz.exists():  # `terraseg predict` writes <out>/<scene>.qgz
        qgz = folder / f"{scene}.qgz"
    with zipfile.ZipFile(qgz) as z:
        root = ET.fromstring(z.read(next(n for n in z.namelist() if n.endswith(".qgs"))))
    return [(str(m.findtext("layername")), Path(str(m.findtext("datasource"))).name)
            for m in root.iter("maplayer")]


def same_outputs(a: Path, b: Path, scenes: tuple[str, ...] = ("a", "b"), *,
                 nonempty: bool = True) -> None:
    for s in scenes:
        assert (classes_of(a, s) == classes_of(b, s)).all()
        # the project written after the masks (a task of its own) is the one-pass export's
        layers = project_of(a, s)
        assert layers == project_of(b, s)
        assert {n for n, _ in layers} >= {"buildings", "roads", "road_centerlines", "runs",
                                          "classes", "instances", "panoptic", "scene"}
        ba, bb = buildings_of(a, s), buildings_of(b, s)
        assert len(ba) == len(bb) and (len(ba) > 0 or not nonempty)
        assert ba.geometry.geom_equals_exact(bb.geometry, tolerance=1e-6).all()
        assert ba["score"].notna().all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cities: list[Path]) -> Path:
    """The two scenes run synchronously (the driver's in-process client) to a local folder."""
    tmp = tmp_path_factory.mktemp("reference")
    summary = run_workflow(load_workflow(workflow(tmp, cities, str(tmp / "out"))))
    assert summary.client["tasks"] > 0
    return tmp / "out"


def test_cluster_run_writes_on_workers_and_sends_little(
    tmp_path: Path, cities: list[Path], reference: Path
) -> None:
    """2 worker processes of 2 threads each: same outputs as in-process; the client receives a few
    KB per chunk; run.json says which worker and device ran each chunk; the store is removed."""
    wf = load_workflow(workflow(tmp_path, cities, str(tmp_path / "out"), cluster={
        "type": "local", "n_workers": 2, "threads_per_worker": 2}))
    summary = run_workflow(wf)
    same_outputs(tmp_path / "out", reference)
    n_chunks = 0
    for s in ("a", "b"):
        run = json.loads((tmp_path / "out" / s / "run.json").read_text())
        chunks = run["chunk_tasks"]
        assert len(chunks) == run["grid"]["n_chunks"] == run["chunks_computed"]
        assert all(c["worker"].startswith("tcp://127.0.0.1:") and c["device"] == "cpu"
                   for c in chunks)
        n_chunks += len(chunks)
        assert not (tmp_path / "out" / s / ".chunks").exists()
    # results of every task (chunks, cores, COG, vectors), not only chunks: a few KB a chunk
    per_chunk = summary.client["bytes_received"] / n_chunks
    assert 0 < per_chunk < 8_000, per_chunk


def test_scenes_in_flight_are_bounded(tmp_path: Path, cities: list[Path]) -> None:
    from distributed import Client, LocalCluster

    from terraseg.engine import cluster as drv

    seen: list[int] = []
    real_admit = drv._Driver.admit

    def admit(self: drv._Driver, sr: drv._SceneRun) -> None:
        real_admit(self, sr)
        seen.append(len({m[0].job.name for m in self.meta.values()}))

    scenes = []
    for name in ("c1", "c2", "c3"):  # three copies of scene b
        scenes.append(tmp_path / f"{name}.tif")
        shutil.copyfile(cities[1], scenes[-1])
    wf = load_workflow(workflow(tmp_path, scenes, str(tmp_path / "out"), stages=["predict"],
                                cluster={"type": "local", "scenes_in_flight": 2}))
    # in-process workers (inproc:// transport, no socket), so the patched admit is the one used
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as lc, Client(lc) as client:
        mp = pytest.MonkeyPatch()
        mp.setattr(drv._Driver, "admit", admit)
        try:
            summary = run_workflow(wf, client=client)
        finally:
            mp.undo()
    assert [Path(s.out_dir).name for s in summary.scenes] == ["c1", "c2", "c3"]
    assert max(seen) == 2 and len(seen) == 3  # the third waited for a slot
    first = classes_of(tmp_path / "out", "c1")
    for s in ("c2", "c3"):
        assert (classes_of(tmp_path / "out", s) == first).all()


def test_failed_chunk_is_recorded_and_other_scenes_finish(
    tmp_path: Path, cities: list[Path], reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from terraseg.engine import tasks

    real = tasks.chunk_task

    def flaky(job: tasks.SceneJob, index: tuple[int, int]) -> dict[str, object]:
        if job.name == "a" and index == (1, 2):
            raise OSError("read failed: simulated bad block")
        return real(job, index)

    monkeypatch.setattr("terraseg.engine.cluster.chunk_task", flaky)
    wf = load_workflow(workflow(tmp_path, cities, str(tmp_path / "out")))
    with pytest.raises(ChunkFailedError, match=r"1 of \d+ chunks failed .*--resume"):
        run_workflow(wf)
    out = tmp_path / "out"
    lines = [json.loads(x) for x in (out / "a" / "failures.jsonl").read_text().splitlines()]
    assert [x["chunk"] for x in lines] == [[1, 2]] and "bad block" in lines[0]["error"]
    assert not (out / "a" / "classes.tif").exists()  # no partial output for the failed scene
    assert (out / "b" / "b.gpkg").exists()  # the other scene finished
    stored = len(list((out / "a" / ".chunks").glob("chunk_*.npz")))
    monkeypatch.setattr("terraseg.engine.cluster.chunk_task", real)
    summary = run_workflow(wf, resume=True)
    a = summary.scenes[0].stats
    assert a["chunks_computed"] == 1 and a["chunks_resumed"] == stored
    assert not (out / "a" / "failures.jsonl").exists()
    same_outputs(out, reference)


# --------------------------------------------------------------------------- s3://


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    pytest.importorskip("boto3")
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server; the AWS variables a worker would have."""
    import boto3

    for key, value in (S3_ENV | {"AWS_ENDPOINT_URL": moto}).items():
        monkeypatch.setenv(key, value)
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto).create_bucket(Bucket=bucket)
    return bucket


def fetch(url: str, dest: Path) -> Path:
    """Copy a run's outputs under ``url`` (s3://) to ``dest``."""
    from terraseg.io.objstore import open_store

    store = open_store(url)
    for name in store.list():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        store.get_file(name, dest / name)
    return dest


def test_s3_output_synchronous(tmp_path: Path, cities: list[Path], reference: Path,
                               s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.io.objstore import S3Store

    def no_download(self: S3Store, name: str, local_path: object) -> None:
        raise AssertionError(f"downloaded {name}: outputs are read through GDAL, never fetched")

    url = f"s3://{s3}/runs/r1"
    with monkeypatch.context() as m:
        m.setattr(S3Store, "get_file", no_download)
        run_workflow(load_workflow(workflow(tmp_path, cities, url)))
    got = fetch(url, tmp_path / "got")
    names = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    for s in ("a", "b"):
        for f in ("classes.tif", "probabilities.tif", "instances.tif", "panoptic.tif",
                  f"{s}.gpkg", f"{s}.qgz", "run.json"):
            assert f"{s}/{f}" in names
    assert "run.json" in names and not any(".chunks" in n for n in names)
    same_outputs(got, reference)


def start_run(wf: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "terraseg"), "run", str(wf), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **env})


def stored_chunks(url: str) -> int:
    from terraseg.io.objstore import open_store

    return len(open_store(url).list(".chunks/chunk_r"))


def wait_for_chunks(url: str, n: int, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while stored_chunks(url) < n:
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)


@pytest.mark.cluster
def test_s3_output_survives_killed_worker_and_killed_client(
    tmp_path: Path, cities: list[Path], s3: str, moto: str
) -> None:
    """Real `dask scheduler` + `dask worker` processes writing to s3:// on moto: a worker killed
    mid-run, then the client killed and the run resumed; both give the in-process output."""
    env = S3_ENV | {"AWS_ENDPOINT_URL": moto}
    model = str(make_slow_model(tmp_path))  # slow enough to be interrupted part-way
    over: dict[str, object] = {"models": {"semantic": model},
                               "tiling": {"tile_px": 128, "overlap_px": 16, "chunk_px": 128}}
    run_workflow(load_workflow(workflow(tmp_path, cities, str(tmp_path / "ref"), **over)))
    with real_dask_cluster(tmp_path, n_workers=2, env=env) as (address, procs):
        url1 = f"s3://{s3}/killed-worker"
        run = start_run(workflow(tmp_path, cities, url1, **over), "--scheduler", address,
                        env=env)
        try:
            wait_for_chunks(f"{url1}/a", 3, run)
            procs[2].send_signal(signal.SIGKILL)
            _, stderr = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, stderr
        same_outputs(fetch(url1, tmp_path / "got1"), tmp_path / "ref", nonempty=False)

        url2 = f"s3://{s3}/resumed"
        wf2 = workflow(tmp_path, cities, url2, **over)
        run = start_run(wf2, "--scheduler", address, env=env)
        try:
            wait_for_chunks(f"{url2}/a", 4, run)
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
        stored = stored_chunks(f"{url2}/a")
        assert stored >= 4
        proc = subprocess.run([str(BIN / "terraseg"), "run", str(wf2), "--scheduler", address,
                               "--resume"], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
        got = fetch(url2, tmp_path / "got2")
        a = json.loads((got / "run.json").read_text())["scenes"][0]["stats"]
        n_a = json.loads((got / "a" / "run.json").read_text())["grid"]["n_chunks"]
        assert stored < n_a
        # a task running when the client died may still have stored its chunk
        assert a["chunks_resumed"] >= stored and a["chunks_computed"] == n_a - a["chunks_resumed"]
        same_outputs(got, tmp_path / "ref", nonempty=False)


def test_predict_run_and_api_give_the_same_output(
    tmp_path: Path, cities: list[Path], reference: Path
) -> None:
    """`terraseg predict` (the driver's graph in its own process), `terraseg run` and
    `terraseg.predict` (the notebook API): byte-identical classes and the same buildings."""
    import terraseg

    scene = cities[0]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [str(BIN / "terraseg"), "predict", str(scene), "--out", str(out / "a"), "--model",
         "cheap", "--tile-px", "256", "--overlap-px", "32", "--chunk-px", "256", "--device",
         "cpu", "--probabilities"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    same_outputs(out, reference, ("a",))
    da = terraseg.predict(str(scene), model="cheap", tile_px=256, overlap_px=32, device="cpu",
                          chunk_px=256)
    assert (np.asarray(da.values).squeeze() == classes_of(reference, "a")).all()


def test_predict_to_dir_runs_on_a_dask_client(
    tmp_path: Path, cities: list[Path], reference: Path
) -> None:
    """`terraseg.predict_to_dir(client=...)`: the one scene's tasks run on the client's worker
    processes, with the outputs of the in-process run."""
    from distributed import Client, LocalCluster

    import terraseg

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        res = terraseg.predict_to_dir(
            cities[0], tmp_path / "a", model="cheap", tile_px=256, overlap_px=32, chunk_px=256,
            device="cpu", write_probabilities=True, vectorize=True, client=client)
    same_outputs(tmp_path, reference, ("a",))
    chunks = json.loads(res.run_json.read_text())["chunk_tasks"]
    assert len(chunks) == res.stats["grid"]["n_chunks"]
    assert all(c["worker"].startswith("tcp://127.0.0.1:") for c in chunks)
    assert res.counts["buildings"] == len(buildings_of(tmp_path, "a"))
    assert res.n_instances is not None and res.n_instances >= res.counts["buildings"]
    assert not (tmp_path / "a" / ".chunks").exists()
