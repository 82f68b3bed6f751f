"""Batched, device-aware prediction of model tiles.

Any :class:`torch.nn.Module` mapping ``(B, C, H, W)`` float tensors to
``(B, K, H, W)`` logits can be used. :class:`TilePredictor` owns device
placement, batching, mixed precision (CUDA; bf16 on request on CPUs that have it),
``channels_last`` and pinned host buffers; it knows nothing about files or geometry.

Thread safety: one predictor may be called from many threads at once (a Dask
worker with ``--nthreads 2`` shares one per process). The model weights are
shared; everything a call writes to (the kept batch buffers, the cached
normalisation tensors) is per thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from terraseg.errors import ConfigError

__all__ = [
    "TTA",
    "Activation",
    "AmpMode",
    "TilePredictor",
    "check_tta",
    "resolve_amp",
    "select_device",
]

log = logging.getLogger(__name__)

AmpMode = Literal["auto", "bf16", "fp16", "off"]
Activation = Literal["softmax", "sigmoid", "identity"]
Backend = Literal["torch", "onnxruntime"]
TTA = Literal["none", "d4"]
"""Test-time augmentation: ``"d4"`` averages a tile's scores over its eight flips and rotations."""
#: Per-band ``(sub, div)``: the model input is ``(raw - sub) / div``.
Normalize = tuple[np.ndarray, np.ndarray]
_NormTensors = tuple[torch.Tensor | None, torch.Tensor]  # (sub or None when all 0, div)
#: Raw tile dtypes handed to torch as they are (others are cast to float32 first).
_TORCH_RAW_DTYPES = frozenset(
    np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "float32", "float64")
)


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` to a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else CPU. Asking for a CUDA device
    that is absent raises :class:`~terraseg.errors.ConfigError` rather than
    silently running on the CPU.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"unknown device '{device}'; use auto, cpu, cuda or cuda:N", device=device
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{device}' requested but CUDA is not available; use --device cpu or auto",
                device=device,
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA devices); "
                "pick an index below that",
                device=device,
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' is not available; use cpu or auto", device=device)
    elif dev.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(
            f"unsupported device '{device}'; use auto, cpu or cuda[:N]", device=device
        )
    return dev


def check_tta(tta: str) -> TTA:
    """``tta`` checked: ``"none"`` or ``"d4"``; anything else raises a one-line ConfigError.

    Examples
    --------
    >>> check_tta("d4")
    'd4'
    """
    if tta not in ("none", "d4"):
        raise ConfigError(f"unknown tta '{tta}'; use none or d4 (the eight flips and "
                          "rotations of each tile)", tta=tta)
    return cast(TTA, tta)


def _d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Element ``(k, flip)`` of the dihedral group D4 on ``(B, C, H, W)``: flip x, then rotate."""
    if flip:
        x = x.flip(3)
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def _d4_inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`_d4` on the model's output (rotate back, then flip back)."""
    if k:
        y = torch.rot90(y, -k, dims=(2, 3))
    return y.flip(3) if flip else y


_D4 = tuple((k, flip) for flip in (False, True) for k in range(4))


def resolve_amp(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``amp`` on ``device``, or ``None`` for full precision.

    ``"auto"`` is mixed precision on CUDA only. On the CPU it is off: autocast
    slows convolutions down where bfloat16 is emulated, and it changes results.
    ``"bf16"`` is allowed on a CPU that computes bfloat16 natively (AVX512-BF16 or
    AMX, :func:`terraseg.models.task.native_cpu_bf16`): about 2x faster there with
    channels-last; anything else on the CPU is refused.

    Examples
    --------
    >>> resolve_amp("auto", torch.device("cpu")) is None
    True
    """
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        from terraseg.models.task import native_cpu_bf16

        if amp == "bf16" and device.type == "cpu" and native_cpu_bf16():
            return torch.bfloat16
        raise ConfigError(
            f"amp='{amp}' needs a CUDA device (or, for bf16, a CPU with native bfloat16: "
            f"AVX512-BF16 or AMX) but the device is '{device}'; use amp='off' or 'auto'",
            amp=amp,
        )
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class TilePredictor:
    """Run a segmentation model over batches of tiles.

    Parameters
    ----------
    model
        A module, or a zero-argument factory returning one (so a Dask worker
        can build its own copy). Set to eval mode and moved to ``device``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size
        Tiles per forward pass.
    amp
        Mixed precision on CUDA: ``"auto"`` (bf16 where supported, else fp16),
        ``"bf16"``, ``"fp16"`` or ``"off"``. Off on the CPU unless ``"bf16"`` is
        asked for on a CPU with native bfloat16 (:func:`resolve_amp`).
    channels_last
        Use the channels-last memory format. ``None`` (default) means yes: it
        was measured faster on this project's CPU machines too (a 1×1 conv 25×,
        a resnet18 U-Net about 1.2×, oneDNN) as well as on CUDA; pass ``False``
        for models that are slower with it.
    activation
        How logits become per-class scores to blend: ``"softmax"`` over the
        class axis, ``"sigmoid"`` per channel, or ``"identity"``.
    backend
        ``"torch"`` (default) or ``"onnxruntime"``: the model exported once to
        ONNX and run by ONNX Runtime, CPU only, kept only if its logits match
        torch's on the first batch (see :mod:`terraseg.engine.onnx`; 1.8× faster than
        channels-last torch for a resnet18 U-Net on this project's CPUs).
    tta
        ``"none"`` (default) or ``"d4"``: run each batch in its eight flips and
        rotations, undo each on the scores (after the activation) and average
        them, on the device, before the tiles are blended; 8× the model's work.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        amp: AmpMode = "auto",
        channels_last: bool | None = None,
        activation: Activation = "softmax",
        backend: Backend = "torch",
        tta: TTA = "none",
    ) -> None:
        self.tta: TTA = check_tta(tta)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}", batch_size=batch_size)
        self.device = select_device(device)
        if backend not in ("torch", "onnxruntime"):
            raise ConfigError(f"unknown backend '{backend}'; use torch or onnxruntime",
                              backend=backend)
        if backend == "onnxruntime" and self.device.type != "cpu":
            raise ConfigError(
                "backend 'onnxruntime' runs on the CPU; use --device cpu or --backend torch",
                device=str(self.device),
            )
        self.batch_size = batch_size
        self.amp_dtype = resolve_amp(amp, self.device)
        self.channels_last = True if channels_last is None else channels_last
        self.activation: Activation = activation
        module = model if isinstance(model, nn.Module) else model()
        module = module.eval().to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.model = module
        self._pin = self.device.type == "cuda"
        # what predict_stream writes to is per thread: `_buffers` (kept batch tensors,
        # name -> tensor) and `norm` (the last normalisation's device tensors)
        self._local = threading.local()
        self.backend: Backend = backend
        self._onnx = None
        if backend == "onnxruntime":
            from terraseg.engine.onnx import OnnxRunner

            self._onnx = OnnxRunner(self.model, torch.get_num_threads())

    def __repr__(self) -> str:
        return (
            f"TilePredictor({type(self.model).__name__}, device={self.device}, "
            f"batch_size={self.batch_size}, amp={self.amp_dtype}, "
            f"channels_last={self.channels_last}, backend={self.backend}"
            + (f", tta={self.tta})" if self.tta != "none" else ")")
        )

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def _buffers(self) -> dict[str, torch.Tensor]:
        """The calling thread's kept batch tensors (created on first use)."""
        try:
            buffers: dict[str, torch.Tensor] = self._local.buffers
        except AttributeError:
            buffers = self._local.buffers = {}
        return buffers

    def _buffer(self, name: str, shape: tuple[int, ...], *, channels_last: bool) -> torch.Tensor:
        """A float32 host tensor of ``shape`` kept between batches (``[:b]`` of a bigger one).

        Reusing the batch-sized tensors instead of allocating each batch anew
        avoids a page fault per 4 KiB each time and the heap fragmentation that
        made peak RSS creep up with scene size. The tensors belong to the
        calling thread: two threads predicting at once never share one.
        """
        buffers = self._buffers
        buf = buffers.get(name)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            buf = torch.empty(shape, dtype=torch.float32).contiguous(memory_format=fmt)
            buffers[name] = buf
        return buf[: shape[0]]

    def _norm_tensors(self, normalize: Normalize) -> _NormTensors:
        """``(sub, div)`` as ``(1, C, 1, 1)`` device tensors (``sub`` ``None`` when all zero).

        Built once per normalisation (and thread) and kept, not once per batch.
        """
        key = (normalize[0].tobytes(), normalize[1].tobytes())
        cached: tuple[tuple[bytes, bytes], _NormTensors] | None = getattr(
            self._local, "norm", None
        )
        if cached is None or cached[0] != key:
            sub, div = (
                torch.as_tensor(v, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
                for v in normalize
            )
            cached = self._local.norm = (key, (sub if bool(sub.any()) else None, div))
        return cached[1]

    def _to_device(
        self, batch: np.ndarray, normalize: Normalize | None = None, *, reuse: bool = False
    ) -> torch.Tensor:
        # any strides are fine: a (B, C, H, W) view of NHWC memory is already
        # channels-last, and .contiguous() below is then free
        arr = np.asarray(batch)
        if normalize is None or arr.dtype not in _TORCH_RAW_DTYPES:
            arr = np.asarray(arr, dtype=np.float32)
        tensor = torch.from_numpy(arr)
        if self._pin:
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=self._pin)
        if normalize is not None:
            # raw values cross to the device (uint8: a quarter of the bytes) and are
            # scaled there: the same float32 (x - sub) / div as InputSpec.apply
            sub, div = self._norm_tensors(normalize)
            if reuse and self.device.type == "cpu":
                buf = self._buffer("input", tuple(tensor.shape), channels_last=self.channels_last)
                tensor = buf.copy_(tensor)
            else:  # a copy: float32 input may share memory with the caller's array
                tensor = tensor.to(torch.float32, copy=True)
            if sub is not None:
                tensor = tensor.sub_(sub)
            tensor = tensor.div_(div)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _activate(self, logits: torch.Tensor, out: str | None = None) -> torch.Tensor:
        # Callers get NCHW planes. On the CPU with kept buffers (the engine): NCHW
        # copy first (2 ms), then the activation on NCHW memory into a second
        # buffer (6 ms, against 9 ms for softmax on channels-last memory followed
        # by the copy), no allocation per batch. Otherwise: activation in the
        # model's layout, then one copy (17 ms against 24 ms for .contiguous()
        # then softmax), for a (8, 3, 512, 512) batch on 2 CPU threads.
        logits = logits.float()
        if out is not None and logits.device.type == "cpu":
            shape = tuple(logits.shape)
            planes = self._buffer("nchw", shape, channels_last=False).copy_(logits)
            if self.activation == "softmax":
                return torch.softmax(planes, 1, out=self._buffer(out, shape, channels_last=False))
            if self.activation == "sigmoid":
                return planes.sigmoid_()
            return planes
        if self.activation == "softmax":
            logits = torch.softmax(logits, dim=1)
        elif self.activation == "sigmoid":
            logits = torch.sigmoid(logits)
        if logits.is_contiguous():
            return logits
        # copy_ into a fresh NCHW tensor: 8 ms against 16 ms for .contiguous()
        return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device).copy_(logits)

    def iter_batches(self, tiles: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, scores)`` for consecutive batches of ``tiles`` ``(N, C, H, W)``.

        ``scores`` is float32 ``(b, K, H, W)`` on the host.
        """
        if tiles.ndim != 4:
            raise ValueError(f"tiles must be (N, C, H, W), got shape {tiles.shape}")
        with torch.inference_mode(), self._autocast():
            for start in range(0, tiles.shape[0], self.batch_size):
                x = self._to_device(tiles[start : start + self.batch_size])
                scores = self._scores(x)
                yield start, scores.cpu().numpy()

    def predict_stream(
        self,
        batches: Iterable[np.ndarray],
        *,
        normalize: Normalize | None = None,
        reuse_buffers: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield float32 ``(b, K, H, W)`` scores for each ``(b, C, H, W)`` batch, in order.

        With ``normalize = (sub, div)`` (per band, see
        :meth:`terraseg.models.spec.InputSpec.affine`) the batches hold raw scene
        values, normalised on the device as ``(x - sub) / div``. With
        ``reuse_buffers`` the host-side batch tensors are kept and refilled, so
        each yielded array is valid only until the next one is requested:
        consume it (blend it) first, as the engine does. The kept tensors are
        per thread, so several threads may stream through one predictor at once.

        On CUDA the next batch is queued on the device before the previous
        result is copied back, so host-side work on batch *n* (blending)
        overlaps the forward pass of batch *n + 1*.
        """
        pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        with torch.inference_mode(), self._autocast():
            for batch in batches:
                x = self._to_device(batch, normalize, reuse=reuse_buffers)
                scores = self._scores(x, "scores" if reuse_buffers else None)
                if self.device.type != "cuda":
                    yield scores.numpy()
                    continue
                host = scores.to("cpu", non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                if pending is not None:
                    pending[1].synchronize()  # waits for the previous copy only
                    yield pending[0].numpy()
                pending = (host, done)
            if pending is not None:
                pending[1].synchronize()
                yield pending[0].numpy()

    def _scores(self, x: torch.Tensor, out: str | None = None) -> torch.Tensor:
        """NCHW float32 scores of a device batch: activated, D4-averaged with ``tta="d4"``."""
        if self.tta == "none":
            return self._activate(self._forward(x), out)
        acc: torch.Tensor | None = None
        for k, flip in _D4:
            xt = _d4(x, k, flip)
            if self.channels_last:
                xt = xt.contiguous(memory_format=torch.channels_last)
            y = _d4_inverse(self._activate(self._forward(xt)), k, flip)
            if acc is None:
                acc = torch.empty(y.shape, dtype=torch.float32, device=y.device).copy_(y)
            else:
                acc.add_(y)
        assert acc is not None  # _D4 has eight elements
        return acc.div_(len(_D4))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._onnx(x) if self._onnx is not None else None
        if out is None:
            out = self.model(x)
        if isinstance(out, dict):  # torchvision-style {"out": logits}
            out = out["out"]
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0] or (
            out.shape[-2:] != x.shape[-2:]
        ):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"model returned {shape} for input {tuple(x.shape)}; "
                "expected (B, K, H, W) logits at the input resolution",
                shape=shape,
            )
        return out

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Scores for all ``tiles`` ``(N, C, H, W)`` as float32 ``(N, K, H, W)``."""
        parts = [scores for _, scores in self.iter_batches(tiles)]
        return np.concatenate(parts, axis=0)
