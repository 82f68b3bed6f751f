"""Model cards, safe loading of every checkpoint format, mismatches, bands and GSD."""

from __future__ import annotations

import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin
from torch import nn

from terraseg.errors import BandError, ConfigError, ModelLoadError, OutputExistsError
from terraseg.models import (
    GSDWarning,
    ModelCard,
    adapt_bands,
    build_network,
    bundled_names,
    check_gsd,
    list_models,
    load_card,
    load_model,
    save_card,
    save_model,
)
from terraseg.models.card import card_path_for
from terraseg.models.loading import detect_format
from terraseg.models.spec import ModelSpec

SMALL_ARCH: dict[str, Any] = {
    "library": "smp",
    "name": "Unet",
    "kwargs": {
        "encoder_name": "tu-resnet18",
        "encoder_depth": 3,
        "decoder_channels": [32, 16, 8],
        "in_channels": 3,
        "classes": 3,
    },
}


def make_card(name: str = "m", **update: Any) -> ModelCard:
    data: dict[str, Any] = {"name": name, "architecture": SMALL_ARCH, "gsd_m": 0.5}
    data.update(update)
    return ModelCard.model_validate(data)


def random_net(card: ModelCard, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_network(card.architecture).eval()
    # non-trivial BatchNorm statistics, so that a lost buffer would show
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    return net


def outputs(net: nn.Module, n_bands: int = 3) -> torch.Tensor:
    torch.manual_seed(123)
    x = torch.rand(2, n_bands, 64, 64)
    with torch.inference_mode():
        out = net(x)
    assert isinstance(out, torch.Tensor)
    return out


# --------------------------------------------------------------------------- cards


def test_card_yaml_round_trip(tmp_path: Path) -> None:
    card = make_card(description="test", metrics={"val_iou_building": 0.5})
    path = save_card(card, tmp_path / "m.card.yaml")
    text = path.read_text()
    assert text.startswith("version: 1\nname: m\n")
    back = load_card(path)
    assert back == card
    spec = back.to_spec()
    assert type(spec) is ModelSpec
    assert spec.n_classes == 3 and spec.input.bands == (1, 2, 3)
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        save_card(card, path)


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"colour": "red"}, r"colour: Extra inputs are not permitted; fix the card"),
        ({"input": {"bands": [1, 2]}}, r"architecture in_channels=3 but input.bands has 2 band"),
        (
            {"classes": [{"id": 0, "name": "bg", "color": [0, 0, 0]}]},
            r"architecture classes=3 but the card lists 1 classes",
        ),
        (
            {"architecture": {"library": "smp", "name": "Unet9", "kwargs": {}}},
            r"architecture: unknown smp architecture 'Unet9'",
        ),
        ({"version": 99}, r"card version 99 is newer than this terraseg understands"),
        ({"gsd_m": -1}, r"gsd_m: Input should be greater than 0"),
        (
            {
                "architecture": {**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "classes": 2}},
                "classes": [
                    {"id": 0, "name": "a", "color": [0, 0, 0]},
                    {"id": 2, "name": "b", "color": [0, 0, 0]},
                ],
            },
            r"class ids must be 0..1 in order",
        ),
    ],
)
def test_card_validation_errors_are_one_clear_line(
    tmp_path: Path, update: dict[str, Any], match: str
) -> None:
    data = make_card().model_dump(mode="json")
    data.update(update)
    path = tmp_path / "bad.card.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelLoadError, match=match) as info:
        load_card(path)
    assert "\n" not in str(info.value)
    assert f"model card '{path}' is invalid" in str(info.value)


def test_card_yaml_syntax_and_type_errors(tmp_path: Path) -> None:
    bad = tmp_path / "a.card.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ModelLoadError, match=r"is not valid YAML at line \d+; fix the syntax"):
        load_card(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ModelLoadError, match="must be a YAML mapping"):
        load_card(bad)
    with pytest.raises(ModelLoadError, match="does not exist; check the path"):
        load_card(tmp_path / "missing.card.yaml")
    # safe_load only: a python tag is an error, not an object
    bad.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ModelLoadError, match="is not valid YAML"):
        load_card(bad)


def test_card_path_for() -> None:
    assert card_path_for("/a/b/roads.v2.safetensors") == Path("/a/b/roads.v2.card.yaml")


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_safetensors_round_trip(tmp_path: Path, dtype: str) -> None:
    card = make_card()
    net = random_net(card)
    weights, card_file = save_model(net, card, tmp_path / "m", dtype=dtype)  # type: ignore[arg-type]
    assert weights.name == "m.safetensors" and card_file.name == "m.card.yaml"
    assert detect_format(weights) == "safetensors"
    loaded, loaded_card = load_model(weights)
    assert loaded_card.weights_sha256 and loaded_card.name == "m"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    expected = outputs(net if dtype == "float32" else net.half().float())
    torch.testing.assert_close(outputs(loaded), expected, rtol=1e-5, atol=1e-5)
    # the card alone names the weights
    again, _ = load_model(card_file)
    torch.testing.assert_close(outputs(again), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(OutputExistsError):
        save_model(net, card, tmp_path / "m")


@pytest.mark.parametrize("prefix", ["", "module."])
def test_state_dict_pt_round_trip(tmp_path: Path, prefix: str) -> None:
    card = make_card()
    net = random_net(card, seed=1)
    path = tmp_path / "sd.pth"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    with pytest.raises(ModelLoadError, match=r"no model card for .*sd.pth.*sd.card.yaml"):
        load_model(path)
    save_card(card, tmp_path / "other.card.yaml")
    loaded, _ = load_model(path, card=tmp_path / "other.card.yaml")
    torch.testing.assert_close(outputs(loaded), outputs(net))
    save_card(card, card_path_for(path))
    loaded, _ = load_model(str(path))
    torch.testing.assert_close(outputs(loaded), outputs(net))
    # {"state_dict": ...} wrappers too
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    loaded, _ = load_model(tmp_path / "wrapped.pt", card=card_path_for(path))
    torch.testing.assert_close(outputs(loaded), outputs(net))


def test_torchscript_round_trip(tmp_path: Path) -> None:
    card = make_card()
    net = random_net(card, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(net, torch.rand(1, 3, 64, 64))  # type: ignore[no-untyped-call]
        torch.jit.save(scripted, str(tmp_path / "ts.pt"))  # type: ignore[no-untyped-call]
    assert detect_format(tmp_path / "ts.pt") == "torchscript"
    with pytest.raises(ModelLoadError, match="TorchScript model .* needs a card"):
        load_model(tmp_path / "ts.pt")
    save_card(card, tmp_path / "ts.card.yaml")
    loaded, loaded_card = load_model(tmp_path / "ts.pt")
    assert loaded_card.architecture.library == "torchscript"
    torch.testing.assert_close(outputs(loaded), outputs(net))
    # a card with other classes is caught by the forward check
    two = make_card(
        classes=[
            {"id": 0, "name": "a", "color": [0, 0, 0]},
            {"id": 1, "name": "b", "color": [1, 1, 1]},
        ],
        architecture={**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "classes": 2}},
    )
    with pytest.raises(ModelLoadError, match=r"returns \(1, 3, 64, 64\) but card .* lists 2 cl"):
        load_model(tmp_path / "ts.pt", card=save_card(two, tmp_path / "two.card.yaml"))


@pytest.fixture(scope="module")
def torchgeo_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A real torchgeo 0.8.1 SemanticSegmentationTask checkpoint made by Lightning (1 step)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset
    from torchgeo.trainers import SemanticSegmentationTask

    class Tiny(Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return 4  # two batches: max_steps=1 stops mid-epoch, before any LR-plateau check

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            return {
                "image": torch.rand(3, 32, 32, generator=g),
                "mask": torch.randint(0, 3, (32, 32), generator=g),
            }

    folder = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0, verbose=False)
    task = SemanticSegmentationTask(
        model="unet",
        backbone="resnet18",
        weights=None,
        in_channels=3,
        num_classes=3,
        class_weights=[1.0, 2.0, 3.0],
    )
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, DataLoader(Tiny(), batch_size=2))
    path = folder / "task.ckpt"
    trainer.save_checkpoint(path)
    return path, task.model.eval()


def test_torchgeo_lightning_checkpoint(
    torchgeo_ckpt: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, model = torchgeo_ckpt
    assert detect_format(path) == "torch"
    loaded, card = load_model(path)
    assert card.architecture.name == "Unet"
    assert card.architecture.kwargs["encoder_name"] == "resnet18"
    assert [c.name for c in card.classes] == ["class0", "class1", "class2"]
    torch.testing.assert_close(outputs(loaded), outputs(model))
    # a card names the classes; the network still comes from the hyper-parameters
    named = make_card("named")
    save_card(named, tmp_path / "named.card.yaml")
    loaded, card = load_model(path, card=tmp_path / "named.card.yaml")
    assert [c.name for c in card.classes] == ["background", "building", "road"]
    assert card.architecture.kwargs["encoder_name"] == "resnet18"
    torch.testing.assert_close(outputs(loaded), outputs(model))
    four = make_card(
        input={"bands": [1, 2, 3, 4]},
        architecture={**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "in_channels": 4}},
    )
    with pytest.raises(ModelLoadError, match=r"in_channels=3 but card .* reads 4 band"):
        load_model(path, card=save_card(four, tmp_path / "four.card.yaml"))


# --------------------------------------------------------------------------- refusals


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain-pickle"])
def test_pickle_with_code_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(3), "x": _Payload(marker)}
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    save_card(make_card(), card_path_for(path))
    with pytest.raises(
        ModelLoadError,
        match=r"refusing to load '.*evil.pt': it contains pickled code \(.*system\); "
        r"re-save it as a state dict",
    ):
        load_model(path)
    assert not marker.exists()


def test_corrupt_missing_and_unknown(tmp_path: Path) -> None:
    card = make_card()
    weights, _ = save_model(random_net(card), card, tmp_path / "m")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"do not match the sha256 in card"):
        load_model(weights)
    # without the checksum the truncation itself is reported
    load_card(card_path_for(weights))
    nosha = card.model_copy(update={"weights_sha256": None})
    save_card(nosha, tmp_path / "nosha.card.yaml")
    with pytest.raises(ModelLoadError, match=r"corrupt or truncated"):
        load_model(weights, card=tmp_path / "nosha.card.yaml")
    torch.save(random_net(card).state_dict(), tmp_path / "t.pt")
    (tmp_path / "t.pt").write_bytes((tmp_path / "t.pt").read_bytes()[:500])
    with pytest.raises(ModelLoadError, match=r"cannot read '.*t.pt'"):
        load_model(tmp_path / "t.pt", card=tmp_path / "nosha.card.yaml")
    (tmp_path / "x.pt").write_bytes(b"hello, not a model")
    with pytest.raises(ModelLoadError, match=r"not a safetensors, torch or TorchScript file"):
        load_model(tmp_path / "x.pt", card=tmp_path / "nosha.card.yaml")
    with pytest.raises(ModelLoadError, match=r"model 'nope' is not a known model \(cheap, "):
        load_model("nope")
    with pytest.raises(ModelLoadError, match=r"'.*missing.safetensors' is not a known model"):
        load_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="no weights found for card"):
        save_card(card, tmp_path / "lonely.card.yaml")
        load_model(tmp_path / "lonely.card.yaml")


def test_card_weights_mismatch(tmp_path: Path) -> None:
    four_bands = make_card(
        input={"bands": [1, 2, 3, 4]},
        architecture={**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "in_channels": 4}},
    )
    weights, _ = save_model(random_net(four_bands), four_bands, tmp_path / "nir")
    save_card(make_card(), tmp_path / "rgb.card.yaml")
    with pytest.raises(
        ModelLoadError,
        match=r"weights '.*nir.safetensors' take 4 input band\(s\) \(first layer '.*'\) but card "
        r".*rgb.card.yaml' says 3 \(bands \[1, 2, 3\]\); use the card that came with the weights",
    ):
        load_model(weights, card=tmp_path / "rgb.card.yaml")
    two = make_card(
        classes=[
            {"id": 0, "name": "bg", "color": [0, 0, 0]},
            {"id": 1, "name": "road", "color": [1, 1, 1]},
        ],
        architecture={**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "classes": 2}},
    )
    save_card(two, tmp_path / "two.card.yaml")
    rgb, _ = save_model(random_net(make_card()), make_card(), tmp_path / "rgb3")
    with pytest.raises(ModelLoadError, match=r"produce 3 class\(es\) .* lists 2 \(bg/road\)"):
        load_model(rgb, card=tmp_path / "two.card.yaml")
    deeper = make_card(
        architecture={
            **SMALL_ARCH,
            "kwargs": {
                **SMALL_ARCH["kwargs"],
                "encoder_depth": 4,
                "decoder_channels": [64, 32, 16, 8],
            },
        }
    )
    save_card(deeper, tmp_path / "deeper.card.yaml")
    with pytest.raises(ModelLoadError, match=r"do not fit smp.Unet from card .*: .*missing"):
        load_model(rgb, card=tmp_path / "deeper.card.yaml")
    bad_kwargs = make_card(
        architecture={**SMALL_ARCH, "kwargs": {**SMALL_ARCH["kwargs"], "encoder_name": "nonet"}}
    )
    save_card(bad_kwargs, tmp_path / "bad.card.yaml")
    with pytest.raises(ModelLoadError, match=r"cannot build smp.Unet\(.*\) from card .*fix arch"):
        load_model(rgb, card=tmp_path / "bad.card.yaml")


# --------------------------------------------------------------------------- bands and GSD


def test_adapt_bands_messages() -> None:
    spec = ModelSpec(name="rgb")
    assert adapt_bands(spec, 3).bands == (1, 2, 3)
    assert adapt_bands(spec, 4).bands == (1, 2, 3)  # NIR is simply not read
    with pytest.raises(BandError, match=r"has 1 band\(s\); pass bands=\[1, 1, 1\] to feed the"):
        adapt_bands(spec, 1, scene="scene 'pan.tif'")
    with pytest.raises(BandError, match=r"pass 3 bands from 1..2 \(e.g. bands=\[1, 2, 2\]\)"):
        adapt_bands(spec, 2)
    assert adapt_bands(spec, 1, bands=[1, 1, 1]).bands == (1, 1, 1)
    assert adapt_bands(spec, 4, bands=[4, 3, 2]).bands == (4, 3, 2)
    with pytest.raises(BandError, match=r"takes 3 input band\(s\) but bands=\[1\] lists 1"):
        adapt_bands(spec, 1, bands=[1])
    with pytest.raises(BandError, match=r"bands \[2\] do not exist in .*, which has 1 band"):
        adapt_bands(spec, 1, bands=[1, 2, 1])


def test_one_band_scene_with_rgb_model(tmp_path: Path) -> None:
    from terraseg.engine.inference import TilePredictor
    from terraseg.engine.pipeline import predict_scene
    from terraseg.io.scene import open_scene

    path = tmp_path / "pan.tif"
    arr = (np.arange(200 * 230, dtype=np.uint32).reshape(1, 200, 230) % 251).astype(np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=230,
        height=200,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_100.0, 5_400_300.0, 0.5, 0.5),
    ) as dst:
        dst.write(arr)
    net, card = load_model("cheap")
    scene = open_scene(path)
    with pytest.raises(BandError, match=r"pass bands=\[1, 1, 1\]"):
        adapt_bands(card, scene.count, scene=f"scene '{path}'")
    spec = card.to_spec().model_copy(
        update={"input": adapt_bands(card, scene.count, bands=[1, 1, 1])}
    )
    result = predict_scene(
        scene,
        TilePredictor(net, device="cpu"),
        spec,
        tmp_path / "out",
        tile_px=128,
        overlap_px=16,
        chunk_px=256,
    )
    with rasterio.open(result.classes_path) as src:
        classes = src.read(1)
    assert classes.shape == (200, 230) and set(np.unique(classes)) <= {0, 1, 2}


def test_check_gsd() -> None:
    card = make_card(gsd_m=0.5, gsd_tolerance=0.25)
    assert check_gsd(card, 0.5) and check_gsd(card, 0.6) and check_gsd(card, 0.375)
    with pytest.raises(
        ConfigError,
        match=r"scene 'a.tif' has a GSD of 0.3 m but model 'm' was trained at 0.5 m \(±25%\); "
        r"resample the scene to 0.5 m first .*does not resample on the fly",
    ):
        check_gsd(card, 0.3, "refuse", scene="scene 'a.tif'")
    with pytest.warns(GSDWarning, match="trained at 0.5 m"):
        assert check_gsd(card, 1.0, "warn") is False
    assert check_gsd(make_card(gsd_m=None), 10.0)  # no GSD stated: never refused
    assert check_gsd(ModelSpec(name="plain"), 10.0)


# --------------------------------------------------------------------------- names and CLI


def test_builtin_and_bundled_models() -> None:
    names = {info.name: info for info in list_models()}
    assert {"cheap", "identity"} <= set(names)
    net, card = load_model("cheap")
    assert card.architecture.library == "builtin" and card.n_classes == 3
    with pytest.raises(ModelLoadError, match="card= applies to checkpoint files only"):
        load_model("cheap", card="x.card.yaml")
    for name in bundled_names():
        assert names[name].source == "bundled"
        net, card = load_model(name)
        assert card.gsd_m and card.metrics
        if card.task == "detection":  # the engine runs a detector as boundary-layout output
            from terraseg.models.combine import resolve_models

            dense, spec = resolve_models(name, None)
            assert outputs(dense, card.input.n_bands).shape[1] == spec.n_classes == 4
            continue
        assert outputs(net, card.input.n_bands).shape[1] == card.n_classes


def test_demo_model_is_bundled_small_and_named() -> None:
    assert "demo-semantic" in bundled_names()
    import importlib.resources

    folder = importlib.resources.files("terraseg.models").joinpath("bundled")
    size = folder.joinpath("demo-semantic.safetensors").stat().st_size  # type: ignore[attr-defined]
    assert size <= 4 * 1024 * 1024
    _, card = load_model("demo-semantic")
    assert [c.name for c in card.classes] == ["background", "building", "road"]
    assert card.training is not None and card.training.command
    assert {"eval_iou_building", "eval_iou_road"} <= set(card.metrics)


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from terraseg.cli.main import main

    monkeypatch.setattr(sys, "argv", ["terraseg", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _cli(monkeypatch, "models") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("cheap ")
    assert _cli(monkeypatch, "models", "show", "cheap") == 0
    assert "name: cheap" in capsys.readouterr().out
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(tmp_path / "PWNED")}, evil)
    assert _cli(monkeypatch, "models", "show", str(evil)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("terraseg: error: refusing to load") and "\n" not in err
    assert not (tmp_path / "PWNED").exists()


def test_zip_detection_does_not_trust_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a model")
    assert detect_format(path) == "unknown"
    save_card(make_card(), card_path_for(path))
    with pytest.raises(ModelLoadError, match="not a safetensors, torch or TorchScript file"):
        load_model(path)


def test_predict_to_dir_with_weights_file(tmp_path: Path) -> None:
    from terraseg.api import predict_to_dir

    card = make_card()
    weights, _ = save_model(random_net(card), card, tmp_path / "m")
    path = tmp_path / "rgb.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=150,
        height=140,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_100.0, 5_400_300.0, 0.5, 0.5),
    ) as dst:
        dst.write(rng.integers(0, 255, (3, 140, 150), dtype=np.uint8))
    result = predict_to_dir(
        path,
        tmp_path / "out",
        model=str(weights),
        tile_px=64,
        overlap_px=16,
        chunk_px=128,
        show_progress=False,
    )
    assert result.classes_path.exists()
