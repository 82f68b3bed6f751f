"""One predictor shared by several threads (a Dask worker with ``--nthreads 2``) gives the
same output as one thread: per-chunk outputs, the class COG and the polygons.

Before the fix, :class:`~terraseg.engine.inference.TilePredictor` kept one set of batch
buffers per process, and two threads overwrote each other's scores with no error.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import rasterio
import yaml

from terraseg.config import load_workflow
from terraseg.core.grid import ChunkGrid
from terraseg.engine.batch import run_workflow
from terraseg.engine.chunk import ChunkResult, predict_chunk, read_chunk, run_chunk
from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import plan_scene
from terraseg.io.scene import open_scene
from terraseg.models.builtin import build_builtin
from terraseg.models.spec import ModelSpec

N_THREADS = 4
T = TypeVar("T")
R = TypeVar("R")


def _predictor(batch_size: int = 2) -> tuple[TilePredictor, ModelSpec]:
    net, spec = build_builtin("cheap")
    return TilePredictor(net, device="cpu", batch_size=batch_size), spec


def _same_result(a: ChunkResult, b: ChunkResult) -> bool:
    assert a.interior is not None and b.interior is not None
    return (
        a.interior.tobytes() == b.interior.tobytes()
        and len(a.pieces) == len(b.pieces)
        and all(wa == wb and pa.tobytes() == pb.tobytes()
                for (wa, pa), (wb, pb) in zip(a.pieces, b.pieces, strict=True))
    )


def _in_threads(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn(item)`` for every item, on N_THREADS threads started together, in item order."""
    barrier = threading.Barrier(N_THREADS)

    def first(_: int) -> None:
        barrier.wait(timeout=30)  # every thread is up before any chunk runs

    with cf.ThreadPoolExecutor(N_THREADS) as pool:
        list(pool.map(first, range(N_THREADS)))
        return list(pool.map(fn, items))


def test_predict_chunk_from_threads_equals_serial(city_file: Path) -> None:
    """Different chunks predicted at once through one shared predictor: bytes equal serial."""
    scene = open_scene(city_file)
    predictor, spec = _predictor()
    grid: ChunkGrid = plan_scene(scene, tile_px=128, overlap_px=16, chunk_px=256)
    inputs = [read_chunk(scene, c, spec) for c in grid]
    serial = [predict_chunk(inp, grid, predictor) for inp in inputs]
    for _ in range(3):  # each round: every chunk once, N_THREADS at a time
        threaded = _in_threads(lambda inp: predict_chunk(inp, grid, predictor), inputs)
        bad = [inp.chunk.index for inp, s, t in zip(inputs, serial, threaded, strict=True)
               if not _same_result(s, t)]
        assert not bad, f"chunks {bad} differ when predicted from {N_THREADS} threads"


def test_run_chunk_from_threads_equals_serial(city_file: Path) -> None:
    """The Dask task's unit of work (read, predict, labels) on threads: labels equal serial."""
    scene = open_scene(city_file)
    predictor, spec = _predictor(batch_size=3)
    grid = plan_scene(scene, tile_px=128, overlap_px=16, chunk_px=256)
    chunks = list(grid)
    serial = [run_chunk(scene, c, grid, predictor, spec) for c in chunks]
    threaded = _in_threads(lambda c: run_chunk(scene, c, grid, predictor, spec), chunks * 2)
    for i, out in enumerate(threaded):
        want = serial[i % len(chunks)]
        assert out.labels is not None and want.labels is not None
        assert out.labels.tobytes() == want.labels.tobytes(), out.index


def test_threads_keep_their_own_buffers_and_share_the_model() -> None:
    predictor, spec = _predictor()
    tiles = np.random.default_rng(0).integers(0, 255, (4, 3, 16, 16)).astype(np.uint8)

    def stream() -> int:
        for scores in predictor.predict_stream([tiles], normalize=spec.input.affine(),
                                               reuse_buffers=True):
            return int(scores.ctypes.data)
        raise AssertionError("no batch")

    main = stream()
    barrier = threading.Barrier(N_THREADS)
    got: list[int] = []

    def in_thread() -> None:
        got.append(stream())
        barrier.wait(timeout=30)  # all threads alive at once: no buffer freed and reused

    threads = [threading.Thread(target=in_thread) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert main not in got and len(set(got)) == N_THREADS  # one buffer per thread
    assert stream() == main  # ... kept between calls of the same thread
    assert sum(1 for _ in predictor.model.parameters()) == 2  # one model (the 1×1 conv)


def test_onnxruntime_backend_first_batches_from_threads(city_file: Path) -> None:
    """Threads that all start on a fresh ONNX Runtime predictor: one export, serial output."""
    pytest.importorskip("onnxruntime")
    scene = open_scene(city_file)
    net, spec = build_builtin("cheap")
    grid = plan_scene(scene, tile_px=128, overlap_px=16, chunk_px=256)
    inputs = [read_chunk(scene, c, spec) for c in list(grid)[:N_THREADS]]
    serial = TilePredictor(net, device="cpu", batch_size=2, backend="onnxruntime")
    want = [predict_chunk(inp, grid, serial) for inp in inputs]
    shared = TilePredictor(net, device="cpu", batch_size=2, backend="onnxruntime")
    got = _in_threads(lambda inp: predict_chunk(inp, grid, shared), inputs)
    assert shared._onnx is not None and shared._onnx.session is not None  # ONNX Runtime ran
    assert all(_same_result(w, g) for w, g in zip(want, got, strict=True))


# ----------------------------------------------------------------------------- workflow


def _workflow(tmp: Path, scene: Path, name: str, cluster: dict[str, object]) -> Path:
    data = {
        "version": 1,
        "name": name,
        "inputs": {"paths": [str(scene)]},
        "models": {"semantic": "cheap"},
        "tiling": {"tile_px": 128, "overlap_px": 16, "chunk_px": 256},
        "inference": {"device": "cpu", "batch_size": 2},
        "stages": ["predict", "vectorize"],
        "outputs": {"dir": str(tmp / name)},
        "cluster": cluster,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _polygons(gpkg: Path) -> dict[str, list[bytes]]:
    import pyogrio

    out = {}
    for layer, geometry_type in pyogrio.list_layers(gpkg):
        if geometry_type is None:  # a table (run metadata)
            continue
        df = pyogrio.read_dataframe(gpkg, layer=str(layer))
        out[str(layer)] = sorted(g.wkb for g in df.geometry)
    return out


def _same_outputs(a: Path, b: Path, stem: str) -> None:
    """Byte-identical class rasters and the same polygons in every layer."""
    with rasterio.open(a / "classes.tif") as da, rasterio.open(b / "classes.tif") as db:
        classes_a, classes_b = da.read(), db.read()
    assert classes_a.tobytes() == classes_b.tobytes(), (
        f"{float((classes_a != classes_b).mean()):.2%} of the pixels differ"
    )
    assert len(np.unique(classes_a)) >= 3  # buildings, roads and background were predicted
    polys_a, polys_b = _polygons(a / f"{stem}.gpkg"), _polygons(b / f"{stem}.gpkg")
    assert polys_a.keys() == polys_b.keys() and any(polys_a.values())
    assert polys_a == polys_b


@pytest.mark.cluster
def test_two_threads_per_worker_equals_one_thread(tmp_path: Path, city_file: Path) -> None:
    """A workflow on a 2-thread LocalCluster worker gives what one thread gives.

    The worker runs in this process (``processes=False``, in-process transport: nothing
    listens), so it shares this process's predictor and torch settings with the
    synchronous reference run.
    """
    from distributed import Client, LocalCluster

    one = run_workflow(load_workflow(_workflow(tmp_path, city_file, "one",
                                               {"type": "synchronous"})))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        two = run_workflow(load_workflow(_workflow(tmp_path, city_file, "two",
                                                   {"type": "local"})), client=client)
    _same_outputs(Path(one.scenes[0].out_dir), Path(two.scenes[0].out_dir), city_file.stem)


@pytest.mark.slow
@pytest.mark.cluster
def test_workflow_threads_per_worker_2_equals_1(tmp_path: Path, city_file: Path) -> None:
    """``cluster: {threads_per_worker: 2}`` against 1, worker processes as a user runs them.

    Compared with each other, not with the synchronous run: a worker process runs
    torch with one intra-op thread (Dask's nanny sets ``OMP_NUM_THREADS=1``), and the
    ``cheap`` model's scores depend on that thread count in the last bits (a few
    pixels in 10⁵ flip class between 1 and 2 torch threads).
    """
    runs = {}
    for threads in (1, 2):
        cluster = {"type": "local", "n_workers": 1, "threads_per_worker": threads}
        summary = run_workflow(load_workflow(_workflow(tmp_path, city_file, f"t{threads}",
                                                       cluster)))
        runs[threads] = Path(summary.scenes[0].out_dir)
    _same_outputs(runs[1], runs[2], city_file.stem)
