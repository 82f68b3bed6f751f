"""The bundled real-imagery model ``oam-buildings``: its card, its data split, its figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import shapely
from real_data import real_file

from terraseg.models import load_model
from terraseg.models.card import load_card
from terraseg.models.resume import RESUME_SUFFIX
from terraseg.recipes import oam_buildings as recipe

BUNDLED = Path(recipe.__file__).resolve().parents[1] / "models/bundled"


def _real() -> Path:
    return real_file(".")


def test_card_states_data_command_and_figures() -> None:
    card = load_card(BUNDLED / "oam-buildings.card.yaml")
    assert card.task == "boundary" and card.gsd_m is not None and 0.25 < card.gsd_m < 0.32
    assert (BUNDLED / "oam-buildings.safetensors").stat().st_size <= 20 * 2**20
    assert card.training is not None and "terraseg.recipes.oam_buildings" in card.training.command
    assert any("(validation)" in d for d in card.training.data)
    for place in recipe.TEST:
        assert not any(place.image in d for d in card.training.data)  # never trained or validated
        for name in ("building_f1", "building_precision", "building_recall", "count_ratio"):
            assert f"test_{place.name}_{name}" in card.metrics
    net, loaded = load_model("oam-buildings")
    assert loaded.name == "oam-buildings"


def test_split_by_place_does_not_overlap() -> None:
    """No test image shares ground with a training or validation image."""
    root = _real()

    def box(place: recipe.Place) -> shapely.Polygon:
        with rasterio.open(root / place.folder / place.image) as src:
            assert src.crs.to_epsg() == 3857
            return shapely.box(*src.bounds)

    seen = [box(p) for p in (*recipe.TRAIN, *recipe.VAL) if p.seed is None]
    for place in recipe.TEST:
        test_box = box(place)
        assert all(test_box.intersection(b).area == 0 for b in seen), place.image
    assert {p.image for p in recipe.STAGE1} <= {p.image for p in recipe.TRAIN}
    assert not {p.image for p in recipe.VAL} & {p.image for p in recipe.TRAIN}


def test_predict_reproduces_the_card_figure(tmp_path: Path) -> None:
    """``terraseg predict --model oam-buildings`` on unseen Nairobi gives the card's F1."""
    root = _real()
    place = recipe.TEST[1]
    from terraseg.api import predict_to_dir
    from terraseg.engine.postprocess import vectorize_scene
    from terraseg.evaluate.scores import evaluate

    out = tmp_path / "out"
    res = predict_to_dir(root / place.folder / place.image, out, model="oam-buildings",
                         device="cpu", write_probabilities=True, show_progress=False)
    vectorize_scene(res.classes_path, out / "instances.tif", out, scene_name=place.name,
                    probabilities_path=res.probabilities_path)
    truth = recipe.clipped_truth(place, root, tmp_path)
    b = evaluate(out / f"{place.name}.gpkg", truth, task="buildings").buildings
    assert b is not None
    card = load_card(BUNDLED / "oam-buildings.card.yaml")
    assert b.f1 == pytest.approx(card.metrics[f"test_{place.name}_building_f1"], abs=0.02)


def test_synthetic_places_are_made_in_the_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synthetic training place is a city made (once) in the workdir at the model's GSD,
    with its truth beside it; the card names the call that makes it. Needs no real data."""
    monkeypatch.setattr(recipe, "SYNTHETIC_PX", 128)
    place = recipe.synthetic(7)
    image = recipe.prepared_image(place, tmp_path / "absent", tmp_path)
    assert image == tmp_path / "city7.tif" and (tmp_path / place.labels).is_file()
    with rasterio.open(image) as src:
        assert (src.width, src.height) == (128, 128)
        assert src.res == pytest.approx((recipe.GSD_M, recipe.GSD_M))
        assert src.crs.to_string() == recipe.SYNTHETIC_CRS
    made = image.stat().st_mtime_ns
    assert recipe.prepared_image(place, tmp_path / "absent", tmp_path) == image
    assert image.stat().st_mtime_ns == made  # not made twice
    assert recipe._note(place) == (
        "terraseg.synthetic.make_city(size_px=128, seed=7, gsd_m=0.3, crs=EPSG:32636) (training)")
    assert all(p.seed is None for p in (*recipe.VAL, *recipe.TEST))


def test_a_decimated_place_is_averaged_and_keeps_its_alpha(tmp_path: Path) -> None:
    """A place with ``factor`` is area-averaged into the workdir once: RGBA stays RGBA (an
    undefined 4th band would lose the alpha mask), the transform is scaled; needs no real
    data."""
    import numpy as np
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    folder = tmp_path / "real" / "town"
    folder.mkdir(parents=True)
    pixels = np.zeros((4, 16, 16), np.uint8)
    pixels[:3, :4, :4] = 200  # one 4x4 block: one output pixel of 200
    pixels[:3, 4:6, :4] = 100  # half of the next block: 50 after averaging
    pixels[3] = 255
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint8",
               "crs": "EPSG:3857", "transform": from_origin(1000.0, 2000.0, 0.075, 0.075),
               "photometric": "rgb", "alpha": "YES"}
    with rasterio.open(folder / "town_oam_z21_block1.tif", "w", **profile) as dst:
        dst.write(pixels)
    place = recipe.Place("town", "town_oam_z21_block1.tif", "labels.geojson", factor=4)
    image = recipe.prepared_image(place, tmp_path / "real", tmp_path)
    assert image == tmp_path / "town_oam_z21_block1_x4.tif"
    with rasterio.open(image) as src:
        assert (src.width, src.height, src.count) == (4, 4, 4)
        assert src.colorinterp[3] == ColorInterp.alpha
        assert src.transform == from_origin(1000.0, 2000.0, 0.3, 0.3)
        out = src.read()
    assert out[0, 0, 0] == 200 and out[0, 1, 0] == 50 and out[0, 2, 0] == 0
    assert (out[3] == 255).all()
    made = image.stat().st_mtime_ns
    assert recipe.prepared_image(place, tmp_path / "real", tmp_path) == image
    assert image.stat().st_mtime_ns == made  # not made twice


def test_stage2_options_reach_the_settings_and_the_cards_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--lr``, ``--edge-weight``, ``--edge-px``, ``--augment``, ``--precision`` and
    ``--renderings`` set stage 2's training, and the command the card records names them
    and the stage-1 model it starts from; needs no real data."""
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_train(root: Path, workdir: Path, stem: Path, places: object,
                   settings: object, command: str, val: object) -> None:
        seen.update(places=places, settings=settings, command=command, val=val)
        raise Stop

    monkeypatch.setattr(recipe, "data_root", lambda: tmp_path)
    monkeypatch.setattr(recipe, "train", fake_train)
    stage1 = tmp_path / "s1.safetensors"
    with pytest.raises(Stop):
        recipe.main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                     "--stage1", str(stage1), "--lr", "3e-4", "--edge-weight", "5",
                     "--edge-px", "4", "--augment", "places", "--precision", "32",
                     "--renderings"])
    settings = seen["settings"]
    assert isinstance(settings, recipe.TrainConfig)
    assert settings.lr == 3e-4 and settings.class_weights == [1.0, 1.0, 1.0, 5.0]
    assert settings.augment == "places" and settings.precision == "32"
    assert settings.edge_px == 4
    assert settings.init_from == str(stage1)
    assert seen["places"] == (*recipe.TRAIN, *recipe.RENDERINGS)
    assert seen["val"] == recipe.VAL
    assert seen["command"] == ("python -m terraseg.recipes.oam_buildings --stage1-steps 200 "
                               "--max-steps 2000 --lr 0.0003 --edge-weight 5 --edge-px 4 "
                               "--augment places --renderings "
                               "--precision 32 (stage 2, from s1.safetensors)")
    with pytest.raises(Stop):  # the defaults are the bundled recipe's and are not repeated
        recipe.main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                     "--stage1", str(stage1)])
    settings = seen["settings"]
    assert isinstance(settings, recipe.TrainConfig) and seen["places"] == recipe.TRAIN
    assert (settings.lr, settings.class_weights) == (recipe.SETTINGS.lr,
                                                     recipe.SETTINGS.class_weights)
    assert (settings.augment, settings.precision, settings.edge_px) == ("muted", "bf16-mixed", 5)
    assert seen["command"] == ("python -m terraseg.recipes.oam_buildings --stage1-steps 200 "
                               "--max-steps 2000 (stage 2, from s1.safetensors)")


def test_max_minutes_and_resume_reach_the_stage_being_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--max-minutes`` reaches both stages; ``--resume`` continues the paused stage and
    keeps a finished stage 1 (needs no real data)."""
    calls: list[tuple[str, object]] = []

    class Stop(Exception):
        pass

    def fake_train(root: Path, workdir: Path, stem: Path, places: object,
                   settings: object, command: str, val: object) -> None:
        calls.append((stem.name, settings))
        if stem.name == recipe.NAME:
            raise Stop

    monkeypatch.setattr(recipe, "data_root", lambda: tmp_path)
    monkeypatch.setattr(recipe, "train", fake_train)
    work, out = tmp_path / "w", tmp_path / "o"
    argv = ["--workdir", str(work), "--out", str(out), "--max-minutes", "25"]
    stage1 = work / f"{recipe.NAME}-stage1"

    def run(*extra: str) -> list[tuple[str, bool, float | None]]:
        calls.clear()
        with pytest.raises(Stop):
            recipe.main([*argv, *extra])
        return [(name, s.resume, s.max_minutes) for name, s in calls]  # type: ignore[attr-defined]

    work.mkdir()
    assert run() == [(stage1.name, False, 25), (recipe.NAME, False, 25)]
    stage1.with_name(stage1.name + RESUME_SUFFIX).touch()  # stage 1 paused
    assert run("--resume") == [(stage1.name, True, 25), (recipe.NAME, False, 25)]
    stage1.with_name(stage1.name + RESUME_SUFFIX).unlink()
    stage1.with_suffix(".safetensors").touch()  # stage 1 finished, stage 2 paused
    out.mkdir()
    (out / f"{recipe.NAME}{RESUME_SUFFIX}").touch()
    assert run("--resume") == [(recipe.NAME, True, 25)]
    assert run() == [(stage1.name, False, 25), (recipe.NAME, False, 25)]  # no --resume: afresh


def test_a_held_out_place_leaves_training_and_joins_validation() -> None:
    """``--hold-out``: the place trains in neither stage, and both its blocks validate."""
    stage1, train, val, z21 = recipe.split()
    assert (stage1, train, val) == (recipe.STAGE1, recipe.TRAIN, recipe.VAL)
    # each validation block at drone resolution, read by the engine as Kampala is: measured,
    # never chosen on
    assert [(p.image, p.factor) for p in z21] == [
        (v.image.replace("_z19_", "_z21_"), 1) for v in recipe.VAL]
    stage1, train, val, z21 = recipe.split("zanzibar_oam_buildings")
    assert all(p.folder != "zanzibar_oam_buildings" for p in (*stage1, *train))
    assert {p.image for p in val if p.folder == "zanzibar_oam_buildings"} == {
        "zanzibar_oam_z19_block1.tif", "zanzibar_oam_z19_block2.tif"}
    assert [p.image for p in z21[:2]] == ["zanzibar_oam_z21_block1.tif",
                                          "zanzibar_oam_z21_block2.tif"]
    assert len(stage1) == len(recipe.STAGE1) - 1 and len(train) == len(recipe.TRAIN) - 1
    assert set(recipe.VAL) < set(val) and not set(val) & set(recipe.TEST)
    with pytest.raises(SystemExit, match="--hold-out must be one of"):
        recipe.split("kampala_block_a_buildings")  # a test place never trains or validates


def test_renderings_add_the_zoom21_files_of_stage2_blocks_but_the_held_out_place() -> None:
    """``--renderings``: each zoom-19 training block's zoom-21 file, averaged 4:1, joins stage
    2 only; a held-out place's does not, and no rendering is of a validation or test block."""
    stage1, train, val, _ = recipe.split(renderings=True)
    assert stage1 == recipe.STAGE1 and train[:len(recipe.TRAIN)] == recipe.TRAIN
    added = train[len(recipe.TRAIN):]
    assert {p.image for p in added} == {
        "zanzibar_oam_z21_block1.tif", "catanduanes_oam_z21_block1.tif",
        "banepa_oam_z21_block1.tif", "nairobi_oam_z21_block2.tif"}
    assert all(p.factor == 4 and p.extent is None for p in added)
    _, train, _, _ = recipe.split("catanduanes_oam_buildings", renderings=True)
    assert all(p.folder != "catanduanes_oam_buildings" for p in train)
    assert len(train) == len(recipe.TRAIN) - 1 + 3
    held = {(p.folder, p.labels) for p in (*recipe.VAL, *recipe.TEST)}
    assert not {(p.folder, p.labels) for p in recipe.RENDERINGS} & held


def test_renderings_cover_the_ground_of_their_zoom19_block() -> None:
    """A rendering averaged 4:1 lies on its zoom-19 block's grid (same labels, same ground)."""
    root = _real()
    for rendering in recipe.RENDERINGS:
        z19 = rendering.image.replace("_z21_", "_z19_")
        with rasterio.open(root / rendering.folder / rendering.image) as fine, \
                rasterio.open(root / rendering.folder / z19) as coarse:
            assert (fine.width // 4, fine.height // 4) == (coarse.width, coarse.height)
            assert fine.bounds == pytest.approx(coarse.bounds, abs=0.01)
