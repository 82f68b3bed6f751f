"""Device selection, AMP guards and batching of TilePredictor (CPU; CUDA paths marked gpu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from terraseg.engine.inference import TilePredictor, resolve_amp, select_device
from terraseg.errors import ConfigError
from terraseg.models.builtin import build_builtin
from terraseg.models.task import native_cpu_bf16


def test_select_device_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_select_device_cuda_absent_is_clear() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available; use --device cpu"):
        select_device("cuda:0")


def test_select_device_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        select_device("gpu0")


def test_amp_is_off_on_cpu_and_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from terraseg.models import task

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(task, "native_cpu_bf16", lambda native=native: native)
        assert resolve_amp("auto", cpu) is None  # results would change: never by default
        assert resolve_amp("off", cpu) is None
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            resolve_amp("fp16", cpu)
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(task, "native_cpu_bf16", lambda: False)  # emulated: slower, refused
    with pytest.raises(ConfigError, match=r"or, for bf16, a CPU with native bfloat16"):
        resolve_amp("bf16", cpu)


@pytest.mark.skipif(not native_cpu_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_bf16_predict_on_the_cpu_agrees_with_float32(tmp_path: Path) -> None:
    """``--amp bf16`` on a CPU with native bfloat16: the same classes on 99.5 % of pixels."""
    import rasterio

    from terraseg.api import predict_to_dir
    from terraseg.synthetic import make_city

    scene = make_city(tmp_path / "city.tif", size_px=512, seed=21).image
    rasters = {}
    for amp in ("off", "bf16"):
        res = predict_to_dir(scene, tmp_path / amp, model="demo-semantic", device="cpu",
                             amp=amp, show_progress=False)
        with rasterio.open(res.classes_path) as src:
            rasters[amp] = src.read(1)
    agree = float((rasters["off"] == rasters["bf16"]).mean())
    assert agree >= 0.995, agree
    assert (rasters["bf16"] == 1).sum() > 0.05 * rasters["bf16"].size  # buildings were found


def test_amp_dtypes_on_cuda_device_object() -> None:
    # resolve_amp only looks at the device type, so this runs without a GPU
    cuda = torch.device("cuda")
    assert resolve_amp("fp16", cuda) is torch.float16
    assert resolve_amp("off", cuda) is None


def test_batch_size_validated() -> None:
    with pytest.raises(ConfigError, match="batch_size must be"):
        TilePredictor(nn.Identity(), device="cpu", batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_predict_matches_direct_forward(batch_size: int, channels_last: bool) -> None:
    net, _ = build_builtin("cheap")
    pred = TilePredictor(net, device="cpu", batch_size=batch_size, channels_last=channels_last)
    tiles = np.random.default_rng(0).random((7, 3, 32, 40), dtype=np.float32)
    got = pred.predict(tiles)
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(tiles)), dim=1).numpy()
    assert got.shape == (7, 3, 32, 40)
    np.testing.assert_allclose(got, want, atol=1e-6)
    streamed = np.concatenate(list(pred.predict_stream([tiles[:2], tiles[2:]])))
    np.testing.assert_allclose(streamed, want, atol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("normalization", ["scale", "meanstd"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_raw_batches_normalised_on_device_equal_host_normalisation(
    dtype: str, normalization: str, channels_last: bool
) -> None:
    # the engine ships raw tiles and normalises per batch: same float32 ops as InputSpec.apply
    from terraseg.models.spec import InputSpec

    spec = (
        InputSpec(normalization="scale", scale=255.0) if normalization == "scale"
        else InputSpec(normalization="meanstd", mean=(90.0, 100.0, 80.0), std=(30.0, 25.0, 40.0))
    )
    rng = np.random.default_rng(2)
    hi = 255 if dtype in ("uint8", "float32") else 3000
    raw = rng.integers(0, hi, (5, 3, 24, 20)).astype(dtype)
    if channels_last:  # an NCHW view of NHWC memory, as the engine cuts tiles
        raw = np.ascontiguousarray(raw.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    host = np.stack([spec.apply(t) for t in raw])
    pred = TilePredictor(nn.Identity(), device="cpu", activation="identity", batch_size=2,
                         channels_last=channels_last)
    want = pred.predict(host)
    for reuse in (False, True):
        got = [b.copy() for b in pred.predict_stream(
            [raw[:2], raw[2:4], raw[4:]], normalize=spec.affine(), reuse_buffers=reuse)]
        np.testing.assert_array_equal(np.concatenate(got), want)


def test_reused_buffers_are_refilled_in_place() -> None:
    # the contract of reuse_buffers: a yielded array is valid until the next is requested
    net, _ = build_builtin("cheap")
    pred = TilePredictor(net, device="cpu", batch_size=2)
    tiles = np.random.default_rng(3).random((4, 3, 16, 16), dtype=np.float32)
    want = pred.predict(tiles)
    stream = pred.predict_stream([tiles[:2], tiles[2:]], reuse_buffers=True)
    first = next(stream)
    np.testing.assert_allclose(first, want[:2], atol=1e-6)
    kept = first.copy()
    second = next(stream)
    np.testing.assert_allclose(second, want[2:], atol=1e-6)
    assert np.shares_memory(first, second)  # the same host buffer, refilled
    assert not np.allclose(first, kept)


def test_affine_refuses_normalisations_without_statistics() -> None:
    from terraseg.models.spec import InputSpec

    with pytest.raises(ValueError, match="needs scene statistics"):
        InputSpec(normalization="percentile").affine()


def test_activations() -> None:
    tiles = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    ident = TilePredictor(nn.Identity(), device="cpu", activation="identity").predict(tiles)
    np.testing.assert_array_equal(ident, tiles)
    sig = TilePredictor(nn.Identity(), device="cpu", activation="sigmoid").predict(tiles)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-tiles)), rtol=1e-5)


def test_model_factory_and_dict_output() -> None:
    class DictOut(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": x[:, :2]}

    pred = TilePredictor(DictOut, device="cpu", activation="identity")
    out = pred.predict(np.ones((1, 3, 4, 4), np.float32))
    assert out.shape == (1, 2, 4, 4)


def test_wrong_output_shape_is_clear() -> None:
    class Pool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.avg_pool2d(x, 2)

    pred = TilePredictor(Pool(), device="cpu")
    with pytest.raises(
        ConfigError, match=r"expected \(B, K, H, W\) logits at the input resolution"
    ):
        pred.predict(np.ones((1, 3, 8, 8), np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_close_to_fp32() -> None:
    import segmentation_models_pytorch as smp

    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3)
    tiles = np.random.default_rng(0).random((4, 3, 256, 256), dtype=np.float32)
    ref = TilePredictor(net, device="cuda", amp="off", channels_last=False).predict(tiles)
    fast = TilePredictor(net, device="cuda", amp="auto", channels_last=True).predict(tiles)
    assert np.abs(ref - fast).max() < 0.05
    assert (ref.argmax(1) == fast.argmax(1)).mean() > 0.99


def test_onnxruntime_backend_matches_torch() -> None:
    pytest.importorskip("onnxruntime")
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3,
                   decoder_channels=(32, 16, 16, 8, 8))
    tiles = np.random.default_rng(4).random((3, 3, 64, 64), dtype=np.float32)
    want = TilePredictor(net, device="cpu", batch_size=2).predict(tiles)
    ort = TilePredictor(net, device="cpu", batch_size=2, backend="onnxruntime")
    got = ort.predict(tiles)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert ort._onnx is not None and ort._onnx.session is not None  # really ran ONNX Runtime
    # raw-tile normalisation and kept buffers go through the same path
    raw = (tiles * 255).astype(np.uint8)
    scale = (np.zeros(3, np.float32), np.full(3, 255.0, np.float32))
    a = np.concatenate([b.copy() for b in ort.predict_stream([raw[:2], raw[2:]], normalize=scale,
                                                              reuse_buffers=True)])
    ref = TilePredictor(net, device="cpu", batch_size=2).predict(raw.astype(np.float32) / 255)
    np.testing.assert_allclose(a, ref, atol=1e-4)


def test_onnxruntime_backend_falls_back_when_outputs_differ(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    from terraseg.engine import onnx as _onnx

    monkeypatch.setattr(_onnx, "TOLERANCE", -1.0)  # nothing is close enough
    net, _ = build_builtin("cheap")
    tiles = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    pred = TilePredictor(net, device="cpu", backend="onnxruntime")
    with caplog.at_level("WARNING", logger="terraseg.engine.onnx"):
        got = pred.predict(tiles)
    assert "using torch" in caplog.text and pred._onnx is not None and pred._onnx.failed
    np.testing.assert_allclose(got, TilePredictor(net, device="cpu").predict(tiles), atol=1e-6)


def test_onnxruntime_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    net, _ = build_builtin("cheap")
    with pytest.raises(ConfigError, match="unknown backend 'tvm'"):
        TilePredictor(net, device="cpu", backend="tvm")  # type: ignore[arg-type]
    import terraseg.engine.inference as inference

    with monkeypatch.context() as m:  # as if CUDA were there: refused before the model moves
        m.setattr(inference, "select_device", lambda _: torch.device("cuda", 0))
        with pytest.raises(ConfigError, match="runs on the CPU"):
            TilePredictor(net, device="cuda", backend="onnxruntime")
    import builtins

    real_import = builtins.__import__

    def no_ort(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ConfigError, match=r"pip install 'terraseg\[onnx\]'"):
        TilePredictor(net, device="cpu", backend="onnxruntime")
