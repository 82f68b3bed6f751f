"""The resume manifest: ``--resume`` keeps stored chunks only when the model, card, tiling,
grid and scene are those that made them, and says in one line what changed otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin
from torch import nn

from terraseg.config import load_workflow
from terraseg.engine.batch import run_workflow
from terraseg.errors import ResumeMismatchError
from terraseg.io.manifest import describe_changes, fingerprint_file, manifest_token
from terraseg.models.card import Architecture, ModelCard, file_sha256, save_card
from terraseg.models.identity import model_fingerprint, run_model_fingerprint

TERRASEG = str(Path(sys.executable).with_name("terraseg"))
STOP_AFTER = 4  # chunks stored before the simulated kill
N_CHUNKS = 12  # 300 x 400 px in chunks of 2 x 2 tiles of 64 px (stride 56)


class Killed(Exception):
    """Stands for the client being killed: raised from the progress callback."""


def save_tiny_model(stem: Path, seed: int) -> Path:
    """A TorchScript 1×1 convolution with its card (fast to load: no network library)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.rand(1, 3, 16, 16))
        torch.jit.save(traced, str(stem.with_suffix(".pt")))
    card = ModelCard(name="tiny-ts", architecture=Architecture(library="torchscript"))
    save_card(card, stem.with_suffix(".card.yaml"), overwrite=True)
    return stem.with_suffix(".pt")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    path = tmp_path / "city.tif"
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 255, (3, 300, 400), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=300, width=400, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(401_000.5, 4_700_000.5, 0.5, 0.5),
                       tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(arr)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    return save_tiny_model(tmp_path / "models" / "tiny", seed=0)


def write_workflow(tmp: Path, scene: Path, model: str | Path, **tiling: Any) -> Path:
    data = {
        "version": 1,
        "name": "resume",
        "inputs": {"paths": [str(scene)]},
        "models": {"semantic": str(model)},
        "tiling": {"tile_px": 64, "overlap_px": 8, "chunk_px": 128, **tiling},
        "inference": {"device": "cpu", "batch_size": 4},
        "stages": ["predict"],
        "outputs": {"dir": str(tmp / "out")},
        "cluster": {"type": "synchronous"},
    }
    path = tmp / "wf.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_killed(wf: Path) -> Path:
    """Run ``wf`` until STOP_AFTER chunks are stored, then die; returns the chunk store."""

    def progress(_: str, done: int, total: int) -> None:
        if done >= STOP_AFTER:
            raise Killed

    with pytest.raises(Killed):
        run_workflow(load_workflow(wf), progress=progress)
    store = Path(load_workflow(wf).outputs.dir) / "city" / ".chunks"
    assert len(list(store.glob("chunk_*.npz"))) == STOP_AFTER
    return store


def terraseg_run(wf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TERRASEG, "run", str(wf), *args], capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "200"})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("terraseg: error: cannot resume"), proc.stderr
    return lines[0]


def read_classes(wf: Path) -> np.ndarray:
    with rasterio.open(Path(load_workflow(wf).outputs.dir) / "city" / "classes.tif") as ds:
        classes: np.ndarray = ds.read(1)
    return classes


# ----------------------------------------------------------------------------- resume


def test_manifest_records_model_card_tiling_grid_and_scene(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    store = run_killed(write_workflow(tmp_path, scene, model))
    m = json.loads((store / "manifest.json").read_text())
    assert m["model"]["semantic"]["sha256"] == file_sha256(model)
    assert m["card"]["name"] == "tiny-ts" and m["card"]["task"] == "semantic"
    assert [c[1] for c in m["card"]["classes"]] == ["background", "building", "road"]
    assert m["tiling"] == {"tile_px": 64, "overlap_px": 8, "chunk_px": 128, "ramp": "cosine",
                           "pad": "reflect"}
    assert len(m["grid"]) == 16 and m["token"] == manifest_token(m)
    assert m["scene"]["shape"] == [300, 400]
    assert m["scene"]["size_bytes"] == scene.stat().st_size
    assert m["scene"]["head_sha256"] == fingerprint_file(scene)["head_sha256"]  # type: ignore[index]


def test_resume_with_same_config_recomputes_only_missing_chunks(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    (tmp_path / "ref").mkdir()
    ref = write_workflow(tmp_path / "ref", scene, model)
    run_workflow(load_workflow(ref))
    wf = write_workflow(tmp_path, scene, model)
    run_killed(wf)
    summary = run_workflow(load_workflow(wf), resume=True)
    stats = summary.scenes[0].stats
    assert stats["chunks_resumed"] == STOP_AFTER
    assert stats["chunks_computed"] == N_CHUNKS - STOP_AFTER
    assert (read_classes(wf) == read_classes(ref)).all()
    # finished: resuming again keeps the scene and computes nothing
    again = run_workflow(load_workflow(wf), resume=True)
    assert again.scenes[0].stats["chunks_computed"] == 0


def test_resume_after_model_change_exits_2_naming_the_model(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    wf = write_workflow(tmp_path, scene, model)
    store = run_killed(wf)
    old, new = file_sha256(model), file_sha256(save_tiny_model(model.with_suffix(""), seed=1))
    line = one_line_error(terraseg_run(wf, "--resume"))
    assert f"the model changed (tiny.pt sha256 {old[:8]}… → sha256 {new[:8]}…)" in line, line
    assert "--overwrite" in line and "tiling" not in line
    assert len(list(store.glob("chunk_*.npz"))) == STOP_AFTER  # nothing was touched


def test_resume_after_tiling_change_exits_2_naming_the_tiling(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    run_killed(write_workflow(tmp_path, scene, model))
    wf = write_workflow(tmp_path, scene, model, tile_px=96, ramp="linear")
    line = one_line_error(terraseg_run(wf, "--resume"))
    assert "the tiling changed (tile_px 64 → 96, ramp cosine → linear)" in line, line
    assert "model" not in line and "grid" not in line


def test_resume_after_model_name_change_names_both(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    wf = write_workflow(tmp_path, scene, model)
    run_killed(wf)
    with pytest.raises(ResumeMismatchError, match=r"the model changed \(tiny\.pt sha256 \w{8}… "
                       r"→ cheap sha256 \w{8}…\); the model card changed \(name tiny-ts → cheap"):
        run_workflow(load_workflow(write_workflow(tmp_path, scene, "cheap")), resume=True)


def test_resume_after_scene_rewrite_is_refused(tmp_path: Path, scene: Path, model: Path) -> None:
    wf = write_workflow(tmp_path, scene, model)
    run_killed(wf)
    with rasterio.open(scene, "r+") as ds:  # same size, new pixels and time
        ds.write(np.zeros((3, 300, 400), np.uint8))
    with pytest.raises(ResumeMismatchError, match=r"the scene changed \(city\.tif: .*mtime_ns"):
        run_workflow(load_workflow(wf), resume=True)


def test_finished_scene_with_changed_model_is_refused(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    """A finished scene is skipped on resume; its run.json manifest must still match."""
    wf = write_workflow(tmp_path, scene, model)
    run_workflow(load_workflow(wf))
    run_json = json.loads((tmp_path / "out" / "city" / "run.json").read_text())
    assert run_json["manifest"]["model"]["semantic"]["sha256"] == file_sha256(model)
    save_tiny_model(model.with_suffix(""), seed=1)
    with pytest.raises(ResumeMismatchError, match=r"cannot resume .*the model changed"):
        run_workflow(load_workflow(wf), resume=True)


def test_resume_and_overwrite_discards_other_configurations_chunks(
    tmp_path: Path, scene: Path, model: Path
) -> None:
    run_killed(write_workflow(tmp_path, scene, model))
    wf = write_workflow(tmp_path, scene, model, overlap_px=16)
    summary = run_workflow(load_workflow(wf), resume=True, overwrite=True)
    assert summary.scenes[0].stats["chunks_resumed"] == 0


def test_store_without_manifest_is_not_trusted(tmp_path: Path, scene: Path, model: Path) -> None:
    wf = write_workflow(tmp_path, scene, model)
    store = run_killed(wf)
    (store / "manifest.json").unlink()  # as an older terraseg left it
    with pytest.raises(ResumeMismatchError, match="has no manifest.json .* --overwrite"):
        run_workflow(load_workflow(wf), resume=True)


# ----------------------------------------------------------------------------- pieces


def test_a_bf16_run_is_not_resumed_in_float32(tmp_path: Path, scene: Path) -> None:
    """An explicit --amp is part of the manifest (auto and off leave it as before)."""
    from terraseg.engine.pipeline import plan_scene
    from terraseg.engine.resume import build_manifest
    from terraseg.io.scene import open_scene
    from terraseg.models.builtin import build_builtin

    sc, spec = open_scene(scene), build_builtin("identity")[1]
    grid = plan_scene(sc, tile_px=64, overlap_px=8, chunk_px=128)
    plain = build_manifest(sc, spec, grid)
    assert build_manifest(sc, spec, grid, amp="off") == plain
    assert build_manifest(sc, spec, grid, amp="auto") == plain
    bf16 = build_manifest(sc, spec, grid, amp="bf16")
    assert describe_changes(bf16, plain) == ["the tiling changed (amp bf16 → null)"]


def test_describe_changes_ignores_display_fields_and_derived_grid() -> None:
    base: dict[str, Any] = {
        "model": {"semantic": {"name": "a.pt", "path": "/x/a.pt", "sha256": "1" * 64}},
        "tiling": {"tile_px": 512},
        "grid": "g1",
        "scene": {"path": "/x/s.tif", "shape": [9, 9], "mtime_ns": 0},
    }
    moved = json.loads(json.dumps(base))
    moved["model"]["semantic"].update(name="b.pt", path="/y/b.pt")
    moved["scene"]["path"] = "/y/s.tif"
    assert describe_changes(base, moved) == [] and manifest_token(base) == manifest_token(moved)
    retiled = {**base, "tiling": {"tile_px": 256}, "grid": "g2"}
    assert describe_changes(base, retiled) == ["the tiling changed (tile_px 512 → 256)"]
    assert manifest_token(base) != manifest_token(retiled)
    regridded = {**base, "grid": "g2"}
    assert describe_changes(base, regridded) == ["the chunk grid changed (g1 → g2)"]
    touched = {**base, "scene": {**base["scene"], "mtime_ns": 1_700_000_000_000_000_000}}
    assert describe_changes(base, touched) == [
        "the scene changed (s.tif: mtime_ns 1970-01-01T00:00:00.000+00:00 → "
        "2023-11-14T22:13:20.000+00:00)"
    ]


def test_model_fingerprints(tmp_path: Path, model: Path) -> None:
    cheap = model_fingerprint("cheap")
    assert cheap["source"] == "builtin" and cheap == model_fingerprint("cheap")
    assert cheap["sha256"] != model_fingerprint("identity")["sha256"]
    by_file = model_fingerprint(model)
    assert by_file["sha256"] == file_sha256(model) and by_file["name"] == "tiny.pt"
    assert model_fingerprint(model.with_suffix(".card.yaml"))["sha256"] == by_file["sha256"]
    assert set(run_model_fingerprint("cheap", None)) == {"semantic"}


def test_task_keys_carry_the_manifest_token(tmp_path: Path, scene: Path) -> None:
    """Every task of a scene (Dask key) carries its manifest's token: a scheduler that still
    holds a chunk of another configuration never hands it back for this one."""
    from terraseg.engine.batch import plan_scene_job
    from terraseg.engine.cluster import LocalClient, run_scenes
    from terraseg.engine.distributed import PredictorOptions, get_worker_predictor
    from terraseg.io.inputs import open_input, scene_input

    class Recording(LocalClient):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[str] = []

        def submit(self, fn: Any, *args: Any, key: str, **kw: Any) -> Any:
            self.keys.append(key)
            return super().submit(fn, *args, key=key, **kw)

    opts = PredictorOptions(model="cheap", device="cpu")
    spec = get_worker_predictor(opts)[1]
    inp = scene_input(scene)
    tokens, keys = [], []
    for ramp in ("cosine", "linear"):
        plan = plan_scene_job(open_input(inp), inp, str(tmp_path / ramp), opts=opts, spec=spec,
                              tile_px=64, overlap_px=8, chunk_px=128, ramp=ramp, vectorize=False)
        client = Recording()
        run_scenes([plan], client)
        assert plan.manifest is not None
        tokens.append(manifest_token(plan.manifest)[:12])
        assert f"terraseg-chunk-city-{tokens[-1]}-0-0" in client.keys
        assert all(f"-{tokens[-1]}" in k for k in client.keys)
        keys.append(set(client.keys))
    assert tokens[0] != tokens[1] and not keys[0] & keys[1]
