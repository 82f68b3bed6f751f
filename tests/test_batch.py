"""Workflows and Dask batch runs: config validation, real scheduler + workers on 127.0.0.1,
a worker killed mid-run, a client killed and resumed. Every process started here is stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from terraseg.config import Workflow, load_workflow
from terraseg.engine.batch import plan_workflow, run_workflow
from terraseg.errors import ConfigError, OutputExistsError

sys.path.insert(0, str(Path(__file__).parent))
from dask_helpers import make_slow_model, real_dask_cluster  # noqa: E402

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def write_scene(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    arr = np.stack([(yy + xx) % 256, (yy * 3) % 256, (xx * 2) % 256]).astype(np.uint8)
    arr = (arr + rng.integers(0, 40, arr.shape)).clip(0, 255).astype(np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=size[0],
        width=size[1],
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        transform=from_origin(401_000.5, 4_700_000.5, 0.5, 0.5),
    ) as ds:
        ds.write(arr)
    return path


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised resnet18 U-Net (:func:`dask_helpers.make_slow_model`)."""
    return make_slow_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("scenes")
    return [write_scene(d / "a.tif", (700, 900), 1), write_scene(d / "b.tif", (520, 480), 2)]


def workflow_file(tmp: Path, scenes: list[Path], model: str, **over: object) -> Path:
    data: dict[str, object] = {
        "version": 1,
        "name": "test",
        "inputs": {"paths": [str(p) for p in scenes]},
        "models": {"semantic": model},
        "tiling": {"tile_px": 256, "overlap_px": 32, "chunk_px": 256},
        "inference": {"device": "cpu", "batch_size": 4},
        "stages": ["predict"],
        "outputs": {"dir": str(tmp / "out")},
        "cluster": {"type": "synchronous"},
    }
    data.update(over)
    path = tmp / "wf.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_classes(out: Path, stem: str) -> np.ndarray:
    with rasterio.open(out / stem / "classes.tif") as ds:
        return ds.read(1)


# ----------------------------------------------------------------------------- config


def test_every_shipped_workflow_validates() -> None:
    files = sorted((REPO / "workflows").glob("*.yaml"))
    assert files, "workflows/ must ship example workflows"
    for f in files:
        wf = load_workflow(f)
        assert wf.version == 1 and wf.stages


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("version: 1\ninputs: {paths: [a.tif]}\nbogus: 1\n", r"bogus: unknown key"),
        (
            "version: 1\ninputs: {paths: [a.tif]}\ntiling: {tile_px: 256, overlap_px: 256}\n",
            r"overlap_px \(256\) must be smaller",
        ),
        (
            "version: 1\ninputs: {paths: [a.tif]}\ntiling: {tile_pixels: 3}\n",
            r"tiling.tile_pixels: unknown key",
        ),
        ("version: 9\ninputs: {paths: [a.tif]}\n", r"newer than this terraseg"),
        (
            "version: 1\ninputs: {paths: [a.tif]}\ncluster: {type: address}\n",
            r"needs cluster.address",
        ),
        (
            "version: 1\ninputs: {paths: [a.tif]}\nname: !!python/object/apply:os.system [echo hi]\n",
            r"YAML tag that is not allowed",
        ),
        ("version: 1\ninputs: [unclosed\n", r"not valid YAML at line"),
        ("- just\n- a list\n", r"must be a mapping"),
        ("version: 1\nstages: [predict]\n", r"at least one scene"),
        (
            "version: 1\ninputs: {paths: [a.tif]}\ninference: {backend: tvm}\n",
            r"inference.backend",
        ),
    ],
)
def test_bad_workflows_are_one_clear_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_workflow(path)
    assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_missing_workflow_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read workflow"):
        load_workflow(tmp_path / "nope.yaml")


def test_version_0_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("inputs: {paths: [a.tif]}\ntiles: {tile_px: 128, overlap_px: 16}\nout_dir: o\n")
    wf = load_workflow(path)
    assert wf.version == 1 and wf.tiling.tile_px == 128
    assert wf.output_dir() == (tmp_path / "o").resolve()


def test_paths_resolve_against_workflow_folder_and_globs(
    tmp_path: Path, scenes: list[Path]
) -> None:
    folder = scenes[0].parent
    (tmp_path / "list.txt").write_text(f"# scenes\n{scenes[1]}\n")
    wf = Workflow(
        inputs={"paths": [f"{folder}/a*.tif"], "list_file": "list.txt"},  # type: ignore[arg-type]
        base_dir=str(tmp_path),
    )
    assert wf.scene_paths() == [str(scenes[0]), str(scenes[1])]
    with pytest.raises(ConfigError, match="matches no file"):
        Workflow(inputs={"paths": ["nothing*.tif"]}, base_dir=str(tmp_path)).scene_paths()  # type: ignore[arg-type]


def test_plan_counts_tasks(tmp_path: Path, scenes: list[Path]) -> None:
    wf = load_workflow(workflow_file(tmp_path, scenes, "cheap"))
    plan = plan_workflow(wf)
    assert plan["n_scenes"] == 2
    assert plan["chunk_tasks"] == sum(s["n_chunks"] for s in plan["scenes"])
    # ceil((n - overlap) / stride) tiles per axis, one tile per chunk here: 3×4 and 3×2
    assert plan["chunk_tasks"] == 3 * 4 + 3 * 2


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, scenes: list[Path], slow_model: Path
) -> Path:
    """The synchronous (no cluster) result every cluster run must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("ref")
    wf = load_workflow(workflow_file(tmp, scenes, str(slow_model)))
    summary = run_workflow(wf)
    assert [s.stats["chunks_computed"] for s in summary.scenes] == [12, 6]
    return tmp / "out"


def test_local_cluster_equals_synchronous(
    tmp_path: Path, scenes: list[Path], slow_model: Path, reference: Path
) -> None:
    wf = load_workflow(
        workflow_file(tmp_path, scenes, str(slow_model), cluster={"type": "local", "n_workers": 2})
    )
    summary = run_workflow(wf)
    for s in ("a", "b"):
        assert (read_classes(tmp_path / "out", s) == read_classes(reference, s)).all()
    assert (
        json.loads((tmp_path / "out" / "run.json").read_text())["config_hash"] == wf.config_hash()
    )
    assert not (tmp_path / "out" / "a" / ".chunks").exists()  # the chunk store is cleaned up
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_workflow(wf)
    assert len(summary.scenes) == 2


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1, always stopped."""
    with real_dask_cluster(tmp_path) as cluster:
        yield cluster


def start_run(wf: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "terraseg"), "run", str(wf), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def wait_for_chunks(store: Path, n: int, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(list(store.glob("chunk_*.npz"))) < n:
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


@pytest.mark.cluster
def test_real_scheduler_worker_killed_then_client_killed_and_resumed(
    tmp_path: Path,
    scenes: list[Path],
    slow_model: Path,
    reference: Path,
    dask_cluster: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, procs = dask_cluster
    wf = workflow_file(tmp_path, scenes, str(slow_model))

    # 1. a worker dies after some chunks finished: the run still completes, output identical
    out1 = tmp_path / "killed-worker"
    run = start_run(wf, "--scheduler", address, "--out", str(out1))
    try:
        wait_for_chunks(out1 / "a" / ".chunks", 4, run)
        procs[2].send_signal(signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    for s in ("a", "b"):
        assert (read_classes(out1, s) == read_classes(reference, s)).all()

    # 2. the client dies mid-run; --resume computes only the missing chunks
    out2 = tmp_path / "resumed"
    run = start_run(wf, "--scheduler", address, "--out", str(out2))
    try:
        wait_for_chunks(out2 / "a" / ".chunks", 5, run)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    stored = len(list((out2 / "a" / ".chunks").glob("chunk_*.npz")))
    assert 5 <= stored < 12
    proc = subprocess.run(
        [str(BIN / "terraseg"), "run", str(wf), "--scheduler", address, "--out", str(out2)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "--resume" in proc.stderr  # refuses to clobber the partial run
    proc = subprocess.run(
        [
            str(BIN / "terraseg"),
            "run",
            str(wf),
            "--scheduler",
            address,
            "--out",
            str(out2),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out2 / "run.json").read_text())
    a = summary["scenes"][0]["stats"]
    # workers write their own chunks: a task already running when the client died may
    # still store its chunk, so the resume can find more than were stored at the kill
    assert a["chunks_resumed"] >= stored and a["chunks_computed"] == 12 - a["chunks_resumed"]
    for s in ("a", "b"):
        assert (read_classes(out2, s) == read_classes(reference, s)).all()


def test_predict_failed_chunk_is_logged_and_resumed(
    tmp_path: Path, scenes: list[Path], reference: Path, slow_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`terraseg predict` runs the workflows' driver: a chunk that raises goes to
    failures.jsonl and the command fails with a ChunkFailedError (one line, exit status 2 from
    the console script) and no output; --resume computes only that chunk and gives the
    uninterrupted run's classes."""
    import shutil

    from typer.testing import CliRunner

    import terraseg.engine.chunk as chunk_mod
    from terraseg.cli.main import app
    from terraseg.errors import ChunkFailedError

    real = chunk_mod.run_chunk

    def flaky(scene, chunk, *args, **kwargs):  # type: ignore[no-untyped-def]
        if chunk.index == (1, 1):
            raise OSError("disk hiccup")
        return real(scene, chunk, *args, **kwargs)

    out = tmp_path / "b"
    args = ["predict", str(scenes[1]), "--out", str(out), "--model", str(slow_model),
            "--device", "cpu", "--batch-size", "4", "--tile-px", "256", "--overlap-px", "32",
            "--chunk-px", "256", "--no-probabilities", "--no-vectorize"]
    monkeypatch.setattr(chunk_mod, "run_chunk", flaky)
    res = CliRunner().invoke(app, ["-q", *args])
    assert isinstance(res.exception, ChunkFailedError), res.output
    assert "1 of 6 chunks failed" in str(res.exception) and "--resume" in str(res.exception)
    lines = (out / "failures.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == 1 and record["chunk"] == [1, 1] and "disk hiccup" in record["error"]
    assert sorted(p.name for p in out.iterdir()) == [".chunks", "failures.jsonl"]

    monkeypatch.setattr(chunk_mod, "run_chunk", real)
    refused = CliRunner().invoke(app, ["-q", *args])  # neither --resume nor --overwrite
    assert isinstance(refused.exception, OutputExistsError)
    assert "--resume" in str(refused.exception)
    res = CliRunner().invoke(app, ["-q", *args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "(5 resumed)" in res.output
    stats = json.loads((out / "run.json").read_text())
    assert stats["chunks_computed"] == 1 and stats["chunks_resumed"] == 5
    assert (read_classes(tmp_path, "b") == read_classes(reference, "b")).all()
    assert not (out / "failures.jsonl").exists() and not (out / ".chunks").exists()
    shutil.rmtree(out)


def test_predict_interrupted_after_its_class_cog_resumes(
    tmp_path: Path, scenes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run interrupted after its COGs were written, in the project task: nothing is
    published (the outputs move into place together when the scene is finished), the chunk
    store is kept, and --resume finishes the scene from it without computing a chunk."""
    import terraseg.engine.cluster as cluster_mod
    from terraseg.engine.predict_dir import predict_to_dir

    def broken(*args: object) -> None:  # Ctrl-C (or a kill) while the project is written
        raise KeyboardInterrupt("killed while writing the project")

    kw = {"model": "cheap", "device": "cpu", "tile_px": 256, "overlap_px": 32, "chunk_px": 256,
          "vectorize": True, "show_progress": False}
    out = tmp_path / "a"
    monkeypatch.setattr(cluster_mod, "project_task", broken)
    with pytest.raises(KeyboardInterrupt, match="killed while"):
        predict_to_dir(scenes[0], out, **kw)
    assert {p.name for p in out.iterdir()} == {".chunks", ".publish"}
    monkeypatch.undo()
    with pytest.raises(OutputExistsError):  # neither --resume nor --overwrite
        predict_to_dir(scenes[0], out, **kw)
    res = predict_to_dir(scenes[0], out, resume=True, **kw)
    assert res.stats["chunks_computed"] == 0
    assert res.stats["chunks_resumed"] == res.stats["grid"]["n_chunks"]
    assert (out / "a.qgz").exists() and res.counts and not (out / ".chunks").exists()


def test_predict_overwrite_leaves_none_of_the_previous_outputs(
    tmp_path: Path, scenes: list[Path]
) -> None:
    """--overwrite with fewer outputs (no probabilities, no vectors) removes the previous
    run's probabilities.tif, instances.tif and GeoPackage instead of leaving them beside."""
    from terraseg.engine.predict_dir import predict_to_dir

    kw = {"model": "cheap", "device": "cpu", "tile_px": 256, "overlap_px": 32, "chunk_px": 256,
          "show_progress": False}
    out = tmp_path / "a"
    predict_to_dir(scenes[0], out, write_probabilities=True, vectorize=True, **kw)
    assert {"probabilities.tif", "instances.tif", "a.gpkg", "a.qgz"} <= {
        p.name for p in out.iterdir()}
    predict_to_dir(scenes[0], out, overwrite=True, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["classes.tif", "classes.tif.aux.xml",
                                                     "run.json"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "workflows").glob("*.yaml")))
def test_every_shipped_workflow_runs_end_to_end(tmp_path: Path, name: str) -> None:
    """Each file in workflows/ runs on a tiny synthetic scene (cluster: this process)."""
    from terraseg.synthetic import make_city

    wf = load_workflow(REPO / "workflows" / name)
    if wf.stages == ["train"]:
        assert wf.train is not None
        wf = wf.model_copy(update={"train": wf.train.model_copy(
            update={"size_px": 256, "max_steps": 2, "patch_px": 64, "batch_size": 2})})
        summary = run_workflow(wf, out=tmp_path / "out")
        weights = Path(summary.scenes[0].outputs["weights"])
        assert weights.exists() and weights.with_name(weights.stem + ".card.yaml").exists()
        from terraseg.models.loading import load_model

        net, card = load_model(weights)
        assert card.n_classes == 3
        return
    city = make_city(tmp_path / "tiny.tif", size_px=400, seed=5)
    wf = wf.model_copy(update={
        "inputs": wf.inputs.model_copy(update={"paths": [str(city.image)]}),
        "cluster": wf.cluster.model_copy(update={"type": "synchronous", "address": None}),
        "tiling": wf.tiling.model_copy(update={"chunk_px": min(wf.tiling.chunk_px, 1024)}),
        "inference": wf.inference.model_copy(update={"device": "cpu"}),
    })
    summary = run_workflow(wf, out=tmp_path / "out")
    outs = summary.scenes[0].outputs
    assert Path(outs["classes"]).exists()
    if "vectorize" in wf.stages:
        assert Path(outs["tiny.gpkg"]).exists() and Path(outs["instances"]).exists()
    if "export" in wf.stages and "fgb" in wf.outputs.formats:
        assert (tmp_path / "out" / "tiny" / "tiny_buildings.fgb").exists()
