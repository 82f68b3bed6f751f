"""Buildings as instances through a boundary model: targets, watershed labelling across
chunks, scores, panoptic output, model pairing and the bad-input lines (issue #16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from scipy import ndimage as ndi

from terraseg.core.grid import PixelWindow
from terraseg.engine.postprocess import label_instances
from terraseg.evaluate.buildings import rank_buildings
from terraseg.instances.targets import EDGE_CLASS, boundary_classes, detection_targets
from terraseg.io.raster_sink import RasterSink
from terraseg.models.spec import BOUNDARY_CLASSES
from terraseg.synthetic import CityScene

TERRASEG = str(Path(sys.executable).with_name("terraseg"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TERRASEG, *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("terraseg: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --------------------------------------------------------------------------- targets


def test_boundary_targets_separate_touching_houses() -> None:
    ids = np.zeros((12, 20), np.int32)
    ids[2:10, 2:9], ids[2:10, 9:17] = 5, 9  # a terrace of two houses sharing a wall
    classes = np.zeros_like(ids, dtype=np.uint8)
    classes[11] = 2  # a road row
    out = boundary_classes(ids, classes, edge_px=2)
    assert set(np.unique(out)) == {0, 1, 2, EDGE_CLASS}
    assert (out[11] == 2).all()
    assert ((out == 1) | (out == EDGE_CLASS)).sum() == (ids > 0).sum()  # buildings unchanged
    interiors, n = ndi.label(out == 1)
    assert n == 2  # the shared wall is edge on both sides
    assert (out[2:10, 7:11] == EDGE_CLASS).all()  # 2 px each side of the shared wall
    assert (out[2:10, 2:7] == 1).all() and (out[2:10, 11:17] == 1).all()  # no outer ring


def test_isolated_small_building_keeps_its_interior() -> None:
    ids = np.zeros((8, 8), np.int32)
    ids[3:5, 3:5] = 1
    out = boundary_classes(ids, np.zeros((8, 8), np.uint8), edge_px=2)
    assert (out[3:5, 3:5] == 1).all() and not (out == EDGE_CLASS).any()


def test_detection_targets_boxes_and_masks() -> None:
    ids = np.zeros((8, 8), np.int32)
    ids[1:4, 1:3], ids[5:7, 4:8], ids[0, 7] = 2, 3, 4  # id 4 is a 1-px sliver
    boxes, masks, kept = detection_targets(ids, min_px=2)
    assert kept.tolist() == [2, 3]
    assert boxes.tolist() == [[1, 1, 3, 4], [4, 5, 8, 7]]
    assert masks.shape == (2, 8, 8) and masks[0].sum() == 6 and masks[1].sum() == 8


# --------------------------------------------------------------------------- labelling


def _boundary_cog(path: Path, classes: np.ndarray, like: Path) -> Path:
    names = {c.id: c.name for c in BOUNDARY_CLASSES}
    colours = {c.id: c.color for c in BOUNDARY_CLASSES}
    with RasterSink(path, like=open_like(like), class_names=names, colormap=colours) as sink:
        sink.write(PixelWindow(0, 0, *classes.shape), classes[None])
    return path


def open_like(path: Path) -> object:
    from terraseg.io.scene import open_scene

    return open_scene(path)


def _truth_boundary(city: CityScene) -> np.ndarray:
    with rasterio.open(city.truth_instances) as ds:
        ids = ds.read(1)
    with rasterio.open(city.truth_classes) as ds:
        classes = ds.read(1)
    return boundary_classes(ids.astype(np.int64), classes, edge_px=2)


def _as_sets(labels: np.ndarray) -> set[frozenset[int]]:
    """Instances as sets of flat pixel indices: equal partitions whatever the ids."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.unique(flat[flat > 0]))
    ends = np.append(bounds[1:], len(flat))
    return {frozenset(order[a:b].tolist()) for a, b in zip(bounds, ends, strict=True)}


def test_label_instances_splits_terraces_and_ignores_chunking(
    city_scene: CityScene, tmp_path: Path
) -> None:
    """An oracle boundary raster (from the truth) gives the truth's buildings back,
    touching houses apart, identically for any chunk size."""
    cog = _boundary_cog(tmp_path / "classes.tif", _truth_boundary(city_scene), city_scene.image)
    results = {}
    for chunk_px in (256, 1024):
        out = tmp_path / f"inst{chunk_px}.tif"
        pan = tmp_path / f"pan{chunk_px}.tif"
        label_instances(cog, out, chunk_px=chunk_px, panoptic_path=pan)
        with rasterio.open(out) as ds:
            results[chunk_px] = ds.read(1)
        with rasterio.open(pan) as ds:
            assert ds.count == 2
            panoptic = ds.read()
        assert (panoptic[1] == results[chunk_px]).all()
        assert not (panoptic[0] == EDGE_CLASS).any()  # the edge ring is folded into building
    assert _as_sets(results[256]) == _as_sets(results[1024])
    with rasterio.open(city_scene.truth_instances) as ds:
        truth = ds.read(1)
    n_truth, n_pred = len(np.unique(truth)) - 1, int(results[256].max())
    assert abs(n_pred - n_truth) <= 0.03 * n_truth, (n_pred, n_truth)
    # connected components of the building mask merge terraces: far fewer objects
    merged = ndi.label(truth > 0, structure=ndi.generate_binary_structure(2, 1))[1]
    assert merged < 0.9 * n_truth <= n_pred


# --------------------------------------------------------------------------- evaluation


def test_rank_buildings_ap_orders_by_score() -> None:
    from shapely import box

    truth = np.array([box(0, 0, 10, 10), box(20, 0, 30, 10)], object)
    pred = np.array([box(0, 0, 10, 10), box(50, 50, 60, 60), box(20, 0, 30, 10)], object)
    good, _ = rank_buildings(pred, np.array([0.9, 0.1, 0.8]), truth)
    bad, f1s = rank_buildings(pred, np.array([0.2, 0.9, 0.1]), truth)
    assert good == pytest.approx(1.0)
    # FP first, then two hits: precision 0, 1/2, 2/3 at recall 0, 0.5, 1; made monotone
    # (all-point interpolation) both recall steps get 2/3
    assert bad == pytest.approx(2 / 3)
    assert dict(f1s)[0.0] == pytest.approx(0.8)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A boundary and a semantic model trained for a few steps (weights barely matter)."""
    from terraseg.models.train import train_semantic
    from terraseg.synthetic import make_city

    folder = tmp_path_factory.mktemp("models")
    city = make_city(folder / "t.tif", size_px=320, seed=5)
    common = {"max_steps": 2, "patch_px": 64, "batch_size": 2, "architecture": {
        "library": "smp", "name": "Unet", "kwargs": {
            "encoder_name": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}}}
    out = {}
    for name, task in (("tiny-boundary", "boundary"), ("tiny-semantic", "semantic")):
        train_semantic(city.image, city.truth_gpkg, folder / name, task=task,
                       loss="ce+dice" if task == "boundary" else "ce", **common)
        out[name] = folder / f"{name}.safetensors"
    out["scene"] = city.image
    return out


def test_predict_boundary_model_scores_and_panoptic(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = run("predict", str(tiny_models["scene"]), "--out", str(out), "--model",
               str(tiny_models["tiny-boundary"]), "--tile-px", "128", "--overlap-px", "16",
               "--chunk-px", "128", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out / "panoptic.tif") as ds:
        assert ds.count == 2 and ds.dtypes[0] == "uint32"
    buildings = gpd.read_file(out / "t.gpkg", layer="buildings")
    assert len(buildings) > 0
    assert buildings["score"].notna().all() and buildings["score"].between(0, 1).all()
    # the QGIS project opens the panoptic raster and shows the source scene under the layers
    import zipfile

    with zipfile.ZipFile(out / "t.qgz") as z:
        qgs = z.read(next(n for n in z.namelist() if n.endswith(".qgs"))).decode()
    assert "<layername>panoptic</layername>" in qgs
    panoptic_xml = qgs[qgs.index("<layername>panoptic</layername>"):]
    assert 'band="2"' in panoptic_xml[: panoptic_xml.index("</maplayer>")]  # ids drawn
    assert "<layername>scene</layername>" in qgs and 'type="multibandcolor"' in qgs
    assert qgs.rindex("<layername>scene</layername>") > qgs.rindex("<layername>buildings")
    _check_in_real_qgis(out / "t.gpkg", out / "t.qgz", tmp_path)


def _check_in_real_qgis(gpkg: Path, qgz: Path, home: Path) -> None:
    """Open the project in QGIS 3.22 (where installed): every layer valid, scene drawn RGB."""
    import json
    import os

    qgis_python = "/usr/bin/python3"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(home)}
    env.pop("PYTHONPATH", None)
    if not Path(qgis_python).exists() or subprocess.run(
        [qgis_python, "-c", "import qgis.core"], env=env, capture_output=True, timeout=60
    ).returncode:
        pytest.skip("QGIS not installed (run .ci/install-system-deps.sh)")
    check = Path(__file__).with_name("qgis_check.py")
    proc = subprocess.run(
        [qgis_python, str(check), "--gpkg", str(gpkg), "--layers", "buildings",
         "--project", str(qgz)], env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    layers = {la["name"]: la for la in json.loads(proc.stdout)["project"]["layers"]}
    assert all(la["valid"] for la in layers.values()), layers
    assert layers["scene"]["renderer"]["type"] == "multibandcolor"
    assert "panoptic" in layers and "instances" in layers


def test_workflow_pairs_semantic_and_instance_models(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    wf = {
        "version": 1, "name": "pair", "inputs": {"paths": [str(tiny_models["scene"])]},
        "models": {"semantic": str(tiny_models["tiny-semantic"]),
                   "instance": str(tiny_models["tiny-boundary"])},
        "tiling": {"tile_px": 128, "overlap_px": 16, "chunk_px": 256},
        "inference": {"device": "cpu"}, "stages": ["predict", "vectorize"],
        "outputs": {"dir": str(tmp_path / "out")}, "cluster": {"type": "synchronous"},
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(wf))
    proc = run("run", str(path))
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "t"
    from terraseg.io.raster_sink import read_class_names

    assert read_class_names(run_dir / "classes.tif")[3] == "building edge"
    buildings = gpd.read_file(run_dir / "t.gpkg", layer="buildings")
    assert buildings["score"].notna().all()
    # models.instance naming a semantic-only model is refused before any compute
    wf["models"] = {"semantic": None, "instance": str(tiny_models["tiny-semantic"])}
    path.write_text(yaml.safe_dump(wf))
    one_line_error(run("run", str(path), "--overwrite"), "models.instance", "semantic model")


def test_card_min_score_leaves_out_low_scoring_buildings_everywhere(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A card's building_min_score drops exactly the buildings scoring below it, in
    ``terraseg predict``, the notebook API and a workflow run; ``--min-score`` overrides it."""
    import json
    import shutil

    scene, common = tiny_models["scene"], ["--tile-px", "128", "--overlap-px", "16",
                                           "--chunk-px", "128", "--device", "cpu"]
    proc = run("predict", str(scene), "--out", str(tmp_path / "all"), "--model",
               str(tiny_models["tiny-boundary"]), "--min-score", "0", *common)
    assert proc.returncode == 0, proc.stderr
    every = gpd.read_file(tmp_path / "all" / "t.gpkg", layer="buildings")
    scores = np.unique(every["score"].to_numpy())
    assert len(scores) >= 4, scores
    cut = float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)
    expected = every[every["score"] >= cut].sort_values("building_id").reset_index(drop=True)
    assert 0 < len(expected) < len(every)

    weights = tmp_path / "picky.safetensors"
    shutil.copy(tiny_models["tiny-boundary"], weights)
    card = yaml.safe_load(
        (tiny_models["tiny-boundary"].parent / "tiny-boundary.card.yaml").read_text()
    )
    card.update(name="picky", weights=weights.name, building_min_score=cut)
    (tmp_path / "picky.card.yaml").write_text(yaml.safe_dump(card))

    proc = run("predict", str(scene), "--out", str(tmp_path / "p"), "--model", str(weights),
               *common)
    assert proc.returncode == 0, proc.stderr
    assert f"left out {len(every) - len(expected)} buildings scoring below" in proc.stderr
    kept = gpd.read_file(tmp_path / "p" / "t.gpkg", layer="buildings").sort_values(
        "building_id").reset_index(drop=True)
    assert kept["building_id"].tolist() == expected["building_id"].tolist()
    assert kept.geometry.geom_equals_exact(expected.geometry, 1e-9).all()
    assert json.loads((tmp_path / "p" / "run.json").read_text())["config"][
        "building_min_score"] == pytest.approx(cut)
    with rasterio.open(tmp_path / "p" / "instances.tif") as a, \
            rasterio.open(tmp_path / "all" / "instances.tif") as b:
        assert np.array_equal(a.read(), b.read())  # the rasters keep every instance

    # --min-area-m2 replaces the card's minimum area (4 m²): fewer buildings, recorded
    proc = run("predict", str(scene), "--out", str(tmp_path / "big"), "--model", str(weights),
               "--min-area-m2", "60", *common)
    assert proc.returncode == 0, proc.stderr
    big = gpd.read_file(tmp_path / "big" / "t.gpkg", layer="buildings")
    assert set(big["building_id"]) < set(kept["building_id"])
    config = json.loads((tmp_path / "big" / "run.json").read_text())["config"]
    assert config["building_min_area_m2"] == 60 and config["building_min_score"] == cut

    # `terraseg vectorize` of the run's classes (probabilities.tif beside them): the same
    proc = run("vectorize", str(tmp_path / "p" / "classes.tif"), "--out",
               str(tmp_path / "v" / "t.gpkg"), "--chunk-px", "128")
    assert proc.returncode == 0, proc.stderr
    again = gpd.read_file(tmp_path / "v" / "t.gpkg", layer="buildings").sort_values(
        "building_id").reset_index(drop=True)
    assert again["building_id"].tolist() == expected["building_id"].tolist()
    assert np.allclose(again["score"], expected["score"])

    # the notebook API from probabilities: the same buildings, scores and threshold
    import terraseg

    probs = terraseg.predict(str(scene), model=str(weights), tile_px=128, overlap_px=16,
                             chunk_px=128, device="cpu", probabilities=True)
    assert probs.attrs["building_min_score"] == pytest.approx(cut)
    nb = terraseg.vectorize(probs, chunk_px=128)["buildings"].sort_values(
        "building_id").reset_index(drop=True)
    assert nb["building_id"].tolist() == expected["building_id"].tolist()
    assert nb.geometry.geom_equals_exact(expected.geometry, 1e-9).all()
    assert np.allclose(nb["score"], expected["score"])

    wf = {"version": 1, "name": "picky", "inputs": {"paths": [str(scene)]},
          "models": {"semantic": str(weights)},
          "tiling": {"tile_px": 128, "overlap_px": 16, "chunk_px": 128},
          "inference": {"device": "cpu"}, "stages": ["predict", "vectorize"],
          "outputs": {"dir": str(tmp_path / "wf")}, "cluster": {"type": "synchronous"}}
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(wf))
    proc = run("run", str(tmp_path / "wf.yaml"))
    assert proc.returncode == 0, proc.stderr
    from_run = gpd.read_file(tmp_path / "wf" / "t" / "t.gpkg", layer="buildings")
    assert sorted(from_run["building_id"]) == expected["building_id"].tolist()

    one_line_error(run("predict", str(scene), "--out", str(tmp_path / "bad"), "--model",
                       str(weights), "--min-score", "1.5", *common), "min_score", "[0, 1]")


def test_a_model_rewritten_at_the_same_path_is_loaded_again(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """In one process (a notebook, a recipe that re-chooses its filters), a card or weights
    rewritten at the same path are used by the next run, not the cached first ones."""
    import json
    import shutil

    from terraseg.api import predict_to_dir
    from terraseg.models.card import load_card, save_card

    weights = tmp_path / "tiny-boundary.safetensors"
    shutil.copy(tiny_models["tiny-boundary"], weights)
    card_path = tmp_path / "tiny-boundary.card.yaml"
    shutil.copy(tiny_models["tiny-boundary"].with_name("tiny-boundary.card.yaml"), card_path)
    kw = {"model": str(weights), "tile_px": 128, "overlap_px": 16, "chunk_px": 128,
          "device": "cpu", "show_progress": False}
    first = predict_to_dir(tiny_models["scene"], tmp_path / "a", **kw)
    assert first.stats["config"]["building_min_score"] == 0.0
    card = load_card(card_path)
    save_card(card.model_copy(update={"building_min_score": 0.6}), card_path, overwrite=True)
    second = predict_to_dir(tiny_models["scene"], tmp_path / "b", **kw)
    assert second.stats["config"]["building_min_score"] == 0.6
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["config"]["building_min_score"] == 0.6


@pytest.mark.slow  # ~2 min: a recipe step (predict, 7-21 finishes, 77-231 evaluations)
def test_recipe_chooses_building_filters_on_validation_data(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """``record_building_filters`` stores the pair with the best validation F1 in the card."""
    import shutil

    from terraseg.models.card import load_card
    from terraseg.recipes.evaluation import MIN_AREA_GRID, MIN_SCORE_GRID, record_building_filters

    weights = tiny_models["tiny-boundary"]
    shutil.copy(weights, tmp_path / weights.name)
    shutil.copy(weights.with_name("tiny-boundary.card.yaml"), tmp_path)
    stem = tmp_path / "tiny-boundary"
    scene = tiny_models["scene"]
    record_building_filters(stem, scene, scene.with_name(f"{scene.stem}.truth.gpkg"), tmp_path)
    card = load_card(tmp_path / "tiny-boundary.card.yaml")
    score, area = card.building_min_score, card.building_min_area_m2
    assert score in (0.0, *MIN_SCORE_GRID) and area in MIN_AREA_GRID
    assert card.metrics["val_filters_f1"] >= card.metrics["val_filters_f1_default"]
    assert f"building_min_score {score:g} and building_min_area_m2 {area:g}" in (
        card.evaluation or "")
    # several validation scenes are pooled (matches, predicted and true summed): the scene
    # twice scores exactly as once
    from terraseg.recipes.evaluation import choose_building_filters

    truth = scene.with_name(f"{scene.stem}.truth.gpkg")
    best, found = choose_building_filters(stem.with_suffix(".safetensors"), [scene, scene],
                                          [truth, truth], tmp_path / "pooled")
    assert best == (score, area, "edge", 0.6)  # the default watershed: the only candidate
    assert found[best] == (card.metrics["val_filters_f1"], card.metrics["val_filters_count_ratio"])
    assert (card.building_landscape, card.building_seed_p) == ("edge", None)
    # with a choice of watersheds, the one with the best pooled F1 goes into the card
    splits = (("edge", 0.6), ("distance", 0.5))
    best, found = choose_building_filters(stem.with_suffix(".safetensors"), [scene], [truth],
                                          tmp_path / "split", splits=splits)
    assert {k[2:] for k in found} == set(splits)
    assert found[best][0] == max(f1 for f1, _ in found.values())
    record_building_filters(stem, scene, truth, tmp_path / "split", splits=splits)
    card = load_card(tmp_path / "tiny-boundary.card.yaml")
    assert (card.building_min_score, card.building_min_area_m2, card.building_landscape,
            card.building_seed_p or 0.6) == best
    assert card.metrics["val_filters_f1"] == found[best][0]
    with pytest.raises(ValueError, match="2 validation scenes but 1 truth"):
        choose_building_filters(stem.with_suffix(".safetensors"), [scene, scene], [truth],
                                tmp_path / "pooled")
    # the pair reaches a run: the class raster carries it for the vectorizer
    from terraseg.engine.finish import FinishOptions

    out = tmp_path / "run"
    proc = run("predict", str(scene), "--out", str(out), "--model", str(stem) + ".safetensors",
               "--tile-px", "128", "--overlap-px", "16", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    opts = FinishOptions.from_masks(out / "classes.tif", out / "probabilities.tif")
    assert (opts.min_score, opts.min_area_m2) == (score, area)


def test_card_with_unknown_task_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "odd.safetensors"
    shutil.copy(tiny_models["tiny-boundary"], weights)
    card = yaml.safe_load(
        (tiny_models["tiny-boundary"].parent / "tiny-boundary.card.yaml").read_text()
    )
    card["task"] = "panoptic-magic"
    card["weights"] = weights.name
    (tmp_path / "odd.card.yaml").write_text(yaml.safe_dump(card))
    proc = run("predict", str(tiny_models["scene"]), "--out", str(tmp_path / "o"), "--model",
               str(weights), "--device", "cpu")
    one_line_error(proc, "odd", "task")
    assert not (tmp_path / "o" / "classes.tif").exists()


def test_detector_checkpoint_with_a_semantic_card_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A torchvision Mask R-CNN state dict behind a card that says semantic U-Net."""
    from safetensors.torch import save_file
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_small", fpn=True, weights=None)
    net = MaskRCNN(backbone, num_classes=None, box_head=TwoMLPHead(256 * 7 * 7, 32),
                   box_predictor=FastRCNNPredictor(32, 2),
                   mask_predictor=MaskRCNNPredictor(256, 64, 2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "det.safetensors"))
    card = yaml.safe_load((tiny_models["tiny-semantic"].parent / "tiny-semantic.card.yaml")
                          .read_text())
    card.update(name="det", weights="det.safetensors")
    card.pop("weights_sha256", None)
    (tmp_path / "det.card.yaml").write_text(yaml.safe_dump(card))
    proc = run("predict", str(tiny_models["scene"]), "--out", str(tmp_path / "o"), "--model",
               str(tmp_path / "det.safetensors"), "--device", "cpu")
    one_line_error(proc, "det.safetensors", "do not fit", "backbone")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_fine_tune_from_a_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """--init-from starts from a model's weights (same task/bands/classes) and says so."""
    from safetensors.torch import load_file

    from terraseg.models.card import load_card

    start = tiny_models["tiny-boundary"]
    out = tmp_path / "tuned"
    args = ["train", str(tiny_models["scene"]), str(tiny_models["scene"].with_name(
        "t.truth.gpkg")), "--out", str(out), "--task", "boundary", "--loss", "ce+dice",
        "--max-steps", "1", "--batch-size", "2", "--patch-px", "64", "--lr", "1e-9"]
    proc = run(*args, "--init-from", str(start), "--class-weights", "1,1,1,2")
    assert proc.returncode == 0, proc.stderr
    card = load_card(f"{out}.card.yaml")
    assert card.training is not None and card.training.init_from is not None
    assert card.training.init_from.startswith("tiny-boundary")
    assert card.architecture.kwargs["encoder_depth"] == 3  # the start model's architecture
    before, after = load_file(str(start)), load_file(f"{out}.safetensors")
    conv = next(k for k in before if k.endswith("conv1.weight"))
    diff = (before[conv].float() - after[conv].float()).abs().max().item()
    assert diff < 1e-3  # lr 1e-9: one step leaves the start weights (up to fp rounding)
    # a semantic start model for a boundary task, or too few class weights: one line, exit 2
    one_line_error(run(*args, "--init-from", str(tiny_models["tiny-semantic"]), "--overwrite"),
                   "cannot fine-tune", "its task is semantic")
    one_line_error(run(*args, "--class-weights", "1,2", "--overwrite"), "class_weights has 2")


def test_a_cards_watershed_reaches_predict_vectorize_and_the_notebook(tmp_path: Path) -> None:
    """A card's ``building_landscape`` and ``building_seed_p`` split the buildings of
    ``terraseg predict``, ``terraseg vectorize`` and the notebook API exactly as the
    engine's watershed with those settings does; ``--landscape``/``--seed-p`` override
    them, and bad values are refused with one line."""
    import json
    import shutil

    import terraseg
    from terraseg.engine.finish import FinishOptions
    from terraseg.engine.postprocess import finish_scene
    from terraseg.synthetic import make_city

    scene = make_city(tmp_path / "t.tif", size_px=384, seed=21).image
    bundled = Path(terraseg.__file__).parent / "models" / "bundled"
    common = ["--tile-px", "128", "--overlap-px", "16", "--chunk-px", "128", "--device", "cpu"]
    proc = run("predict", str(scene), "--out", str(tmp_path / "all"), "--model",
               "demo-instance", *common)
    assert proc.returncode == 0, proc.stderr
    default = FinishOptions.from_masks(tmp_path / "all" / "classes.tif")
    assert (default.seed_p, default.landscape) == (None, "edge")
    # the reference: the engine's own watershed with the settings, chunked as in the run
    ref = finish_scene(tmp_path / "all" / "classes.tif", tmp_path / "ref.tif", chunk_px=128,
                       probabilities_path=tmp_path / "all" / "probabilities.tif",
                       seed_p=0.9, landscape="distance")
    with rasterio.open(tmp_path / "ref.tif") as a, \
            rasterio.open(tmp_path / "all" / "instances.tif") as b:
        expected, edge_default = a.read(1), b.read(1)
    assert not np.array_equal(expected, edge_default)  # the settings change the instances

    weights = tmp_path / "split.safetensors"
    shutil.copy(bundled / "demo-instance.safetensors", weights)
    card = yaml.safe_load((bundled / "demo-instance.card.yaml").read_text())
    card.update(name="split", weights=weights.name, building_landscape="distance",
                building_seed_p=0.9)
    (tmp_path / "split.card.yaml").write_text(yaml.safe_dump(card))
    from terraseg.models.card import load_card

    assert "split distance from seeds p >= 0.9" in load_card(tmp_path / "split.card.yaml").summary()
    proc = run("predict", str(scene), "--out", str(tmp_path / "p"), "--model", str(weights),
               *common)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "p" / "instances.tif") as src:
        assert np.array_equal(src.read(1), expected)
    config = json.loads((tmp_path / "p" / "run.json").read_text())["config"]
    assert (config["building_landscape"], config["building_seed_p"]) == ("distance", 0.9)
    opts = FinishOptions.from_masks(tmp_path / "p" / "classes.tif")
    assert (opts.seed_p, opts.landscape) == (0.9, "distance")
    buildings = gpd.read_file(tmp_path / "p" / "t.gpkg", layer="buildings")
    assert len(buildings) == len(ref.layers.buildings)

    # `terraseg vectorize` of the run's classes reads the settings from the class raster
    proc = run("vectorize", str(tmp_path / "p" / "classes.tif"), "--out",
               str(tmp_path / "v" / "t.gpkg"), "--chunk-px", "128")
    assert proc.returncode == 0, proc.stderr
    again = gpd.read_file(tmp_path / "v" / "t.gpkg", layer="buildings")
    assert len(again) == len(buildings)
    assert np.allclose(np.sort(again.area), np.sort(buildings.area))

    # the notebook API: the attributes carry them to terraseg.vectorize
    probs = terraseg.predict(str(scene), model=str(weights), tile_px=128, overlap_px=16,
                             chunk_px=128, device="cpu", probabilities=True)
    assert (probs.attrs["building_landscape"], probs.attrs["building_seed_p"]) == (
        "distance", 0.9)
    nb = terraseg.vectorize(probs, chunk_px=128)["buildings"]
    assert len(nb) == len(buildings)
    assert np.allclose(np.sort(nb.area), np.sort(buildings.area))

    # the options override the card: back to the engine's default watershed
    proc = run("predict", str(scene), "--out", str(tmp_path / "o"), "--model", str(weights),
               "--landscape", "edge", "--seed-p", "0.6", *common)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "o" / "instances.tif") as src:
        assert np.array_equal(src.read(1), edge_default)
    for option, value, words in (("--landscape", "ridge", "'edge' or 'distance'"),
                                 ("--seed-p", "0", "(0, 1]")):
        one_line_error(run("predict", str(scene), "--out", str(tmp_path / "bad"), "--model",
                           str(weights), option, value, *common), words)
        assert not (tmp_path / "bad").exists()
