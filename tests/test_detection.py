"""The Mask R-CNN path (issue #16): rendering detections densely, predict end to end
(chunking changes nothing, every building scored), training, and bad cards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import yaml
from torch import nn

from terraseg.models.detector import DETECTOR_DEFAULTS, DenseDetections, build_maskrcnn

TERRASEG = str(Path(sys.executable).with_name("terraseg"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TERRASEG, *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


class _Fixed(nn.Module):
    """A stand-in detector: the same detections for every image."""

    def __init__(self, boxes: list[tuple[int, int, int, int]], scores: list[float]) -> None:
        super().__init__()
        self.boxes, self.scores = boxes, scores

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        h, w = images[0].shape[-2:]
        masks = torch.zeros(len(self.boxes), 1, h, w)
        for k, (r0, c0, r1, c1) in enumerate(self.boxes):
            masks[k, 0, r0:r1, c0:c1] = 0.9
        out = {"masks": masks, "scores": torch.tensor(self.scores),
               "labels": torch.ones(len(self.boxes), dtype=torch.int64)}
        return [out for _ in images]


def test_detections_render_as_boundary_probabilities() -> None:
    # two touching houses, and a third overlapping the second with a lower score
    det = _Fixed([(2, 2, 10, 8), (2, 8, 10, 14), (4, 12, 12, 18)], [0.9, 0.8, 0.6])
    dense = DenseDetections(det, edge_px=1)(torch.zeros(1, 3, 16, 20))[0].numpy()
    assert dense.shape == (4, 16, 20)
    np.testing.assert_allclose(dense.sum(0), 1.0, atol=1e-6)
    assert (dense[2] == 0).all()  # a detector says nothing about roads
    assert dense[1, 5, 4] == pytest.approx(0.9)  # interior of house 1 carries its score
    assert dense[3, 5, 7] == pytest.approx(0.9) and dense[3, 5, 8] == pytest.approx(0.8)
    assert dense[1, 5, 4] > 0 and dense[3, 5, 4] == 0
    assert dense[1, 11, 16] == pytest.approx(0.6)  # house 3 keeps the pixels 2 did not take
    assert dense[0, 0, 0] == 1.0


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight detector saved like a trained one (5 detections per tile, any score)."""
    from terraseg.models.card import Architecture, ModelCard
    from terraseg.models.loading import save_model
    from terraseg.models.spec import DEFAULT_CLASSES, InputSpec
    from terraseg.synthetic import make_city

    folder = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    kwargs = {**DETECTOR_DEFAULTS, "detections_per_img": 5, "score_thresh": 0.0}
    card = ModelCard(name="det", task="detection", input=InputSpec(bands=(1, 2, 3)),
                     classes=DEFAULT_CLASSES[:2],
                     architecture=Architecture(library="torchvision", name="MaskRCNN",
                                               kwargs=kwargs), gsd_m=0.5)
    net = build_maskrcnn(**kwargs).eval()
    with torch.no_grad():  # random boxes, but every one a confident building with a full mask
        net.roi_heads.box_predictor.cls_score.bias[:] = torch.tensor([-8.0, 8.0])
        net.roi_heads.mask_predictor.mask_fcn_logits.bias[:] = torch.tensor([-8.0, 8.0])
    save_model(net, card, folder / "det", dtype="float16")
    city = make_city(folder / "t.tif", size_px=256, seed=5)
    return {"weights": folder / "det.safetensors", "scene": city.image}


def test_predict_with_a_detector_chunking_changes_nothing(
    detector: dict[str, Path], tmp_path: Path
) -> None:
    outs = {}
    for chunk in ("128", "256"):
        out = tmp_path / f"c{chunk}"
        proc = run("predict", str(detector["scene"]), "--out", str(out), "--model",
                   str(detector["weights"]), "--tile-px", "128", "--overlap-px", "32",
                   "--chunk-px", chunk, "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
        outs[chunk] = out
    with rasterio.open(outs["128"] / "classes.tif") as a, rasterio.open(
        outs["256"] / "classes.tif"
    ) as b:
        assert a.tags(ns="terraseg").get("classes") == b.tags(ns="terraseg").get("classes")
        np.testing.assert_array_equal(a.read(), b.read())
    small = gpd.read_file(outs["128"] / "t.gpkg", layer="buildings")
    big = gpd.read_file(outs["256"] / "t.gpkg", layer="buildings")
    assert len(small) == len(big) > 0
    assert small["score"].notna().all() and small["score"].between(0, 1).all()
    key = ["area_m2"]
    np.testing.assert_allclose(small.sort_values(key)["area_m2"].to_numpy(),
                               big.sort_values(key)["area_m2"].to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_detector_behind_models_instance_with_a_semantic_model(
    detector: dict[str, Path], tmp_path: Path
) -> None:
    wf = {
        "version": 1, "name": "pair", "inputs": {"paths": [str(detector["scene"])]},
        "models": {"semantic": "cheap", "instance": str(detector["weights"])},
        "tiling": {"tile_px": 128, "overlap_px": 32, "chunk_px": 256},
        "inference": {"device": "cpu"}, "stages": ["predict", "vectorize"],
        "outputs": {"dir": str(tmp_path / "out")}, "cluster": {"type": "synchronous"},
    }
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(wf))
    proc = run("run", str(tmp_path / "wf.yaml"))
    assert proc.returncode == 0, proc.stderr
    buildings = gpd.read_file(tmp_path / "out" / "t" / "t.gpkg", layer="buildings")
    assert len(buildings) > 0 and buildings["score"].notna().all()
    roads = gpd.read_file(tmp_path / "out" / "t" / "t.gpkg", layer="roads")
    assert len(roads) > 0  # roads from the semantic model


def test_detection_card_with_a_unet_is_refused(detector: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    shutil.copy(detector["weights"], tmp_path / "odd.safetensors")
    card = yaml.safe_load(detector["weights"].with_name("det.card.yaml").read_text())
    card.update(name="odd", weights="odd.safetensors")
    card["architecture"] = {"library": "smp", "name": "Unet",
                            "kwargs": {"encoder_name": "tu-resnet10t"}}
    card.pop("weights_sha256", None)
    (tmp_path / "odd.card.yaml").write_text(yaml.safe_dump(card))
    proc = run("predict", str(detector["scene"]), "--out", str(tmp_path / "o"), "--model",
               str(tmp_path / "odd.safetensors"), "--device", "cpu")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "detection models are torchvision MaskRCNN" in lines[0], lines
    assert not (tmp_path / "o" / "classes.tif").exists()


@pytest.mark.slow
def test_train_detection_tiny_run(detector: dict[str, Path], tmp_path: Path) -> None:
    scene = detector["scene"]
    out = tmp_path / "tiny"
    proc = run("train", str(scene), str(scene.with_name("t.truth.gpkg")), "--out", str(out),
               "--task", "detection", "--max-steps", "2", "--batch-size", "1", "--patch-px",
               "64", "--fp16")
    assert proc.returncode == 0, proc.stderr
    assert "train_loss=" in proc.stdout
    from terraseg.models import load_model

    net, card = load_model(f"{out}.safetensors")
    assert card.task == "detection" and card.training is not None and card.training.steps == 2
    assert [c.name for c in card.classes] == ["background", "building"]
    assert (out.with_suffix(".safetensors")).stat().st_size < 20e6
    with torch.inference_mode():
        assert isinstance(net([torch.rand(3, 64, 64)]), list)
