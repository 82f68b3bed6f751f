"""Superpixel-assisted labelling round trip: segment --for-labelling, fill classes, train, predict.

The labelling GeoPackage of ``terraseg segment --for-labelling`` is filled in
place (:func:`~terraseg.export.labelling.set_segment_classes`; QGIS's own edit is
checked in the QGIS test) from the truth (the majority truth class of each segment; about half the segments left
unlabelled); its training labels must hold IGNORE_LABEL exactly on the
unlabelled segments; ``terraseg train`` then trains on it and ``terraseg
predict`` runs the model. The QGIS form and style are checked in real QGIS
when it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray

from terraseg.cli.main import main
from terraseg.errors import ConfigError
from terraseg.export.labelling import set_segment_classes
from terraseg.export.qgis_forms import VALUE_MAP_NULL
from terraseg.export.qgis_styles import read_layer_styles
from terraseg.models.labels import is_labelling_file, rasterize_labels, read_labelled_segments
from terraseg.models.spec import IGNORE_LABEL
from terraseg.synthetic import CityScene, make_city

SIZE_PX = 320
QGIS_PYTHON = "/usr/bin/python3"
QGIS_CHECK = Path(__file__).with_name("qgis_check.py")


def _cli(*args: str) -> tuple[int, str, str]:
    """Run ``terraseg -q ARGS``; return the exit status, stdout and stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):  # fmt: skip
        mp.setattr(sys, "argv", ["terraseg", "-q", *args])
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _read(path: Path) -> NDArray[np.int64]:
    with rasterio.open(path) as ds:
        return np.asarray(ds.read(1), np.int64)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityScene:
    return make_city(tmp_path_factory.mktemp("city") / "city.tif", size_px=SIZE_PX, seed=7)


@pytest.fixture(scope="module")
def labelling(city: CityScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``terraseg segment city.tif --method slic --for-labelling --out DIR``: DIR."""
    out = tmp_path_factory.mktemp("segment") / "seg"
    code, stdout, stderr = _cli(
        "segment",
        str(city.image),
        "--method",
        "slic",
        "--for-labelling",
        "--chunk-px",
        "192",
        "--out",
        str(out),
    )
    assert code == 0, stderr
    assert "labelling.gpkg" in stdout
    assert f"terraseg train {city.image} {out / 'labelling.gpkg'}" in stdout  # the next step
    return out


@pytest.fixture(scope="module")
def truth_classes(city: CityScene, labelling: Path) -> dict[int, int]:
    """Majority truth class of every segment (by ``segment_id``)."""
    ids, truth = _read(labelling / "segments.tif"), _read(city.truth_classes)
    counts = np.zeros((int(ids.max()) + 1, 3), np.int64)
    np.add.at(counts, (ids.ravel(), truth.ravel()), 1)
    return {s: int(np.argmax(counts[s])) for s in range(1, len(counts)) if counts[s].sum()}


@pytest.fixture(scope="module")
def filled(labelling: Path, truth_classes: dict[int, int],
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[int]]:  # fmt: skip
    """A copy of the labelling folder with half the segments classed; the labelled ids."""
    folder = tmp_path_factory.mktemp("filled") / "seg"
    shutil.copytree(labelling, folder)
    rng = np.random.default_rng(0)
    ids = np.array(sorted(truth_classes))
    chosen = set(rng.choice(ids, len(ids) // 2, replace=False).tolist())
    changed = set_segment_classes(folder / "labelling.gpkg", {s: truth_classes[s] for s in chosen})
    assert changed >= len(chosen)  # a segment cut by nodata has one row per piece
    return folder / "labelling.gpkg", chosen


# ----------------------------------------------------------------- the labelling file


def test_labelling_file_has_every_segment_an_empty_class_and_a_form(labelling: Path) -> None:
    gpkg = labelling / "labelling.gpkg"
    assert sorted(p.name for p in labelling.iterdir()) == [
        "labelling.gpkg",
        "labelling.qgz",
        "segment.json",
        "segments.tif",
    ]
    frame = gpd.read_file(gpkg, layer="segments")
    ids = _read(labelling / "segments.tif")
    assert set(frame["segment_id"]) == set(np.unique(ids[ids > 0]).tolist())
    assert frame["class"].isna().all()
    assert is_labelling_file(gpkg)
    (style,) = [r for r in read_layer_styles(gpkg) if r["f_table_name"] == "segments"]
    assert style["useAsDefault"] == 1
    qml = str(style["styleQML"])
    assert 'type="ValueMap"' in qml and 'type="categorizedSymbol"' in qml
    assert VALUE_MAP_NULL in qml and 'name="building" value="1"' in qml
    params = json.loads((labelling / "segment.json").read_text())
    assert params["label_classes"] == "background,building,road"


def test_training_labels_are_ignored_exactly_on_unlabelled_segments(
    city: CityScene,
    labelling: Path,
    filled: tuple[Path, set[int]],
    truth_classes: dict[int, int],
    tmp_path: Path,
) -> None:
    gpkg, chosen = filled
    out = rasterize_labels(
        gpkg, city.image, tmp_path / "labels.tif", n_classes=3, block_rows=100
    )  # several blocks
    labels, ids = _read(out), _read(labelling / "segments.tif")
    expected = np.full(ids.shape, IGNORE_LABEL)
    lut = np.full(int(ids.max()) + 1, IGNORE_LABEL)
    for s in chosen:
        lut[s] = truth_classes[s]
    expected = lut[ids]
    np.testing.assert_array_equal(labels, expected)
    labelled = np.isin(ids, list(chosen))
    assert 0.3 < labelled.mean() < 0.7  # about half the pixels count in the loss
    assert set(np.unique(labels[labelled]).tolist()) == {0, 1, 2}
    assert (labels[~labelled] == IGNORE_LABEL).all()


def test_train_then_predict_round_trip(
    city: CityScene, filled: tuple[Path, set[int]], tmp_path: Path
) -> None:
    gpkg, _ = filled
    model = tmp_path / "labelled"
    code, stdout, stderr = _cli(
        "train",
        str(city.image),
        str(gpkg),
        "--out",
        str(model),
        "--max-steps",
        "3",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "2",
        "--patch-px",
        "64",
        "--seed",
        "1",
    )
    assert code == 0, stderr
    assert "wrote" in stdout and model.with_suffix(".safetensors").exists()
    card = (tmp_path / "labelled.card.yaml").read_text()
    assert "val_iou_building" in card
    pred = tmp_path / "pred"
    code, stdout, stderr = _cli(
        "predict",
        str(city.image),
        "--out",
        str(pred),
        "--model",
        str(model.with_suffix(".safetensors")),
        "--device",
        "cpu",
        "--tile-px",
        "128",
        "--overlap-px",
        "16",
        "--no-probabilities",
    )
    assert code == 0, stderr
    classes = _read(pred / "classes.tif")
    assert classes.shape == (SIZE_PX, SIZE_PX)
    assert set(np.unique(classes).tolist()) <= {0, 1, 2}
    assert (pred / "city.gpkg").exists()


def test_workflow_train_stage_reads_a_labelling_file(
    city: CityScene, filled: tuple[Path, set[int]], tmp_path: Path
) -> None:
    gpkg, _ = filled
    wf = tmp_path / "train.yaml"
    wf.write_text(
        "version: 1\nname: label-train\nstages: [train]\ntrain:\n"
        f"  image: {city.image}\n  labels: {gpkg}\n  out: wf-model\n  max_steps: 1\n"
        "  steps_per_epoch: 1\n  batch_size: 2\n  patch_px: 64\n"
        f"outputs:\n  dir: {tmp_path / 'run'}\n"
    )
    code, _, stderr = _cli("run", str(wf))
    assert code == 0, stderr
    assert (tmp_path / "run" / "wf-model.safetensors").exists()


# ----------------------------------------------------------------- bad input


def _one_line_exit_2(code: int, stderr: str, match: str) -> None:
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert match in lines[0], lines[0]


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({}, "has no segment with a class"),
        ({1: 1, 2: 7}, "class(es) [7] outside the model's class ids 0..2"),
    ],
    ids=["nothing-labelled", "unknown-class"],
)
def test_train_refuses_bad_labelling_files(
    city: CityScene, labelling: Path, tmp_path: Path, setting: dict[int, int], match: str
) -> None:
    gpkg = tmp_path / "labelling.gpkg"
    shutil.copy(labelling / "labelling.gpkg", gpkg)
    set_segment_classes(gpkg, setting)
    code, _, stderr = _cli(
        "train",
        str(city.image),
        str(gpkg),
        "--out",
        str(tmp_path / "m"),
        "--max-steps",
        "1",
        "--patch-px",
        "64",
    )
    _one_line_exit_2(code, stderr, match)
    assert not list(tmp_path.glob("m.*"))  # nothing written


def test_train_refuses_a_labelling_file_for_boundary_models(
    city: CityScene, filled: tuple[Path, set[int]], tmp_path: Path
) -> None:
    code, _, stderr = _cli(
        "train",
        str(city.image),
        str(filled[0]),
        "--out",
        str(tmp_path / "m"),
        "--max-steps",
        "1",
        "--patch-px",
        "64",
        "--task",
        "boundary",
    )
    _one_line_exit_2(code, stderr, "trains --task semantic only")


def test_read_labelled_segments_checks_against_the_model_classes(
    city: CityScene, filled: tuple[Path, set[int]]
) -> None:
    from terraseg.io.scene import open_scene

    shapes = read_labelled_segments(filled[0], open_scene(city.image), n_classes=3)
    assert len(shapes) >= len(filled[1]) and {c for _, c in shapes} == {0, 1, 2}
    with pytest.raises(ConfigError, match=r"class\(es\) \[2\] outside the model's class ids 0..1"):
        read_labelled_segments(filled[0], open_scene(city.image), n_classes=2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "kmeans", "--for-labelling"], "--for-labelling needs a region method"),
        (["--classes", "background,building"], "add --for-labelling"),
        (["--for-labelling", "--classes", "building"], "must be 2..255 distinct non-empty names"),
        (["--for-labelling", "--classes", "a,b,a"], "must be 2..255 distinct non-empty names"),
    ],
    ids=["kmeans", "classes-alone", "one-class", "repeated"],
)
def test_segment_refuses_bad_labelling_options(
    city: CityScene, tmp_path: Path, args: list[str], match: str
) -> None:
    out = tmp_path / "o"
    code, _, stderr = _cli("segment", str(city.image), "--out", str(out), *args)
    _one_line_exit_2(code, stderr, match)
    assert not out.exists()


def test_segment_for_labelling_with_own_classes(city: CityScene, tmp_path: Path) -> None:
    code, _, stderr = _cli(
        "segment",
        str(city.image),
        "--method",
        "felzenszwalb",
        "--for-labelling",
        "--classes",
        "other,water,tree",
        "--out",
        str(tmp_path),
    )
    assert code == 0, stderr
    (style,) = read_layer_styles(tmp_path / "labelling.gpkg")
    qml = str(style["styleQML"])
    for i, name in enumerate(["other", "water", "tree"]):
        assert f'name="{name}" value="{i}"' in qml
    assert "building" not in qml


# ----------------------------------------------------------------- real QGIS


def _qgis_env(home: Path) -> dict[str, str]:
    runtime = home / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime)}  # fmt: skip


def _require_qgis(env: dict[str, str]) -> None:
    if not Path(QGIS_PYTHON).exists():
        pytest.skip(f"QGIS not installed: no {QGIS_PYTHON} (apt-get install python3-qgis)")
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], env=env,
                           capture_output=True, timeout=60)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"QGIS not installed: {QGIS_PYTHON} cannot import qgis.core")


#: Set ``class`` = 1 on the first feature through QGIS's own editing, as a click would.
QGIS_EDIT = """
import sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False); app.initQgis()
layer = QgsVectorLayer(sys.argv[1] + "|layername=segments", "segments", "ogr")
feature = next(layer.getFeatures())
layer.startEditing()
ok = layer.changeAttributeValue(feature.id(), layer.fields().indexOf("class"), 1)
print(feature["segment_id"], ok and layer.commitChanges(), flush=True)
del feature, layer  # before exitQgis, or QGIS 3.22 crashes on the way out
app.exitQgis()
"""


def test_qgis_opens_the_labelling_layer_with_its_form_and_style(
    labelling: Path, tmp_path: Path
) -> None:
    env = _qgis_env(tmp_path)
    _require_qgis(env)
    moved = tmp_path / "moved"
    shutil.copytree(labelling, moved)
    proc = subprocess.run(
        [QGIS_PYTHON, str(QGIS_CHECK), "--gpkg", str(moved / "labelling.gpkg"),
         "--layers", "segments", "--project", str(moved / "labelling.qgz")],
        env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    from_gpkg = report["gpkg"]["segments"]
    (from_project,) = [
        ly
        for ly in report["project"]["layers"]
        if ly["name"] == "segments" and ly.get("kind") == "vector"
    ]
    for layer in (from_gpkg, from_project):
        assert layer["valid"]
        renderer = layer["renderer"]
        assert renderer["type"] == "categorizedSymbol" and renderer["attr"] == "class"
        cats = {c["label"]: c for c in renderer["categories"]}
        assert [cats[n]["value"] for n in ("background", "building", "road")] == ["0", "1", "2"]
        assert cats["unlabelled"]["value"] == "" and not cats["unlabelled"]["symbol"]["filled"]
        widget = layer["widgets"]["class"]
        assert widget["type"] == "ValueMap" and widget["editable"]
        assert widget["config"]["map"] == [
            {"unlabelled": VALUE_MAP_NULL},
            {"background": "0"},
            {"building": "1"},
            {"road": "2"},
        ]
        assert "segment_id" in layer["widgets"]["_read_only"]
    assert report["gpkg"]["segments"]["db_styles"]["names"] == ["terraseg labelling"]
    # segments over the image, no raster of segment ids hiding it
    layers = [(ly["name"], ly.get("kind"), ly["valid"]) for ly in report["project"]["layers"]]
    assert layers == [("segments", "vector", True), ("runs", "vector", True),
                      ("scene", "raster", True)]  # fmt: skip
    # an edit saved by QGIS is what training reads
    edit = subprocess.run([QGIS_PYTHON, "-c", QGIS_EDIT, str(moved / "labelling.gpkg")],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert edit.returncode == 0, edit.stderr[-3000:]
    segment_id, committed = edit.stdout.split()[-2:]
    assert committed == "True"
    frame = gpd.read_file(moved / "labelling.gpkg", layer="segments")
    labelled = frame[frame["class"].notna()]
    assert labelled["segment_id"].tolist() == [int(segment_id)]
    assert labelled["class"].tolist() == [1]


def test_set_segment_classes_resets_and_refuses_other_files(
    labelling: Path, city: CityScene, tmp_path: Path
) -> None:
    gpkg = tmp_path / "labelling.gpkg"
    shutil.copy(labelling / "labelling.gpkg", gpkg)
    assert set_segment_classes(gpkg, {3: 2, 4: 1}) == 2
    assert set_segment_classes(gpkg, {4: None}) == 1
    frame = gpd.read_file(gpkg, layer="segments")
    assert frame.loc[frame["class"].notna(), "segment_id"].tolist() == [3]
    with pytest.raises(ConfigError, match="has no layer 'segments' with 'segment_id'"):
        set_segment_classes(city.truth_gpkg, {1: 1})


def test_training_patches_are_drawn_from_the_labelled_part(
    city: CityScene, labelling: Path, truth_classes: dict[int, int], tmp_path: Path
) -> None:
    """Segments labelled in one corner: the training and held-out areas lie around them."""
    import shapely

    from terraseg.config import TrainConfig
    from terraseg.models.datasets import training_areas
    from terraseg.models.labels import DEFAULT_LAYERS

    gpkg = tmp_path / "labelling.gpkg"
    shutil.copy(labelling / "labelling.gpkg", gpkg)
    ids = _read(labelling / "segments.tif")
    corner = [int(s) for s in np.unique(ids[:100, :100]) if s > 0]
    set_segment_classes(gpkg, {s: truth_classes[s] for s in corner})
    cfg = TrainConfig(max_steps=1, patch_px=64)
    areas = training_areas(city.image, gpkg, None, None, layers=DEFAULT_LAYERS, cfg=cfg,
                           n_classes=3, workdir=tmp_path)  # fmt: skip
    frame = gpd.read_file(gpkg, layer="segments")
    labelled = shapely.union_all(frame[frame["class"].notna()].geometry.to_numpy())
    train, val = areas.train_rois[0], areas.val_rois[0]
    assert train is not None
    with rasterio.open(city.image) as ds:
        scene_area = (ds.bounds.right - ds.bounds.left) * (ds.bounds.top - ds.bounds.bottom)
        res = ds.res[0]
    drawn = shapely.union_all([train, val])
    assert drawn.area < 0.3 * scene_area  # not the whole image
    assert labelled.buffer(2 * 64 * res).contains(drawn)  # around the labelled corner
    assert val.intersection(labelled).area > 0.5 * val.area  # validation sees labels
    assert train.intersection(labelled).area > 0.5 * train.area
