"""Safe loading (and saving) of models: built-in, bundled, and users' checkpoints.

A model file must never be able to run code. Weights are read with
:func:`safetensors.torch.load_file` or ``torch.load(..., weights_only=True)``;
a pickle that refers to anything but tensors and plain containers is refused
with :class:`~terraseg.errors.ModelLoadError` before any of it runs.

Supported sources, all resolved by :func:`load_model`:

- built-in names (``"cheap"``, ``"identity"``) and bundled names
  (``"demo-semantic"``; files in ``terraseg/models/bundled/``);
- ``x.safetensors`` with its card ``x.card.yaml`` beside it (or ``card=``);
- a state dict saved by ``torch.save(model.state_dict(), "x.pt")`` (``.pt``/``.pth``),
  with a card;
- a torchgeo Lightning checkpoint (``.ckpt``) of ``SemanticSegmentationTask``:
  the network is rebuilt from its ``hyper_parameters`` exactly as torchgeo
  does; a card is optional (classes are then named ``class0..N``);
- a TorchScript archive (``torch.jit.save``), with a card. TorchScript runs
  its own compiled graph, not Python, but load it only from sources you trust.

The kind of file is detected from its contents, not its suffix.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.resources.abc
import logging
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from terraseg.errors import ModelLoadError
from terraseg.io.atomic import atomic_output, check_writable_dir
from terraseg.models.builtin import BUILTIN_MODELS, build_builtin
from terraseg.models.card import (
    CARD_SUFFIX,
    Architecture,
    ModelCard,
    card_path_for,
    file_sha256,
    load_card,
)
from terraseg.models.spec import DEFAULT_CLASSES, ClassInfo, InputSpec

__all__ = [
    "WEIGHT_SUFFIXES",
    "ModelInfo",
    "bundled_names",
    "build_network",
    "card_from_torchgeo_hparams",
    "detect_format",
    "list_models",
    "load_model",
    "load_state_dict_file",
    "resolve_card",
    "save_model",
]

log = logging.getLogger(__name__)

FileFormat = Literal["safetensors", "torch", "torchscript", "unknown"]
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".ts", ".jit")
_RESAVE = "re-save it as a state dict (torch.save(model.state_dict(), path)) or safetensors"

# torchgeo SemanticSegmentationTask(model=...) → smp class, as in its configure_models()
_TORCHGEO_MODELS = {
    "unet": "Unet",
    "deeplabv3+": "DeepLabV3Plus",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One line about an available model."""

    name: str
    source: Literal["builtin", "bundled"]
    summary: str


# --------------------------------------------------------------------------- bundled


def _bundled_dir() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("terraseg.models").joinpath("bundled")


def bundled_names() -> list[str]:
    """Names of the models shipped in ``terraseg/models/bundled`` (one card each)."""
    folder = _bundled_dir()
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(CARD_SUFFIX)] for p in folder.iterdir() if p.name.endswith(CARD_SUFFIX)
    )


@contextlib.contextmanager
def _bundled_paths(name: str) -> Iterator[tuple[Path, Path]]:
    """Real filesystem paths of a bundled model's card and weights (extracted if zipped)."""
    folder = _bundled_dir()
    card_res = folder.joinpath(name + CARD_SUFFIX)
    with importlib.resources.as_file(card_res) as card_path:
        card = load_card(card_path)
        weights_name = card.weights or f"{name}.safetensors"
        with importlib.resources.as_file(folder.joinpath(weights_name)) as weights_path:
            yield card_path, weights_path


def list_models() -> list[ModelInfo]:
    """Built-in and bundled models, one :class:`ModelInfo` each."""
    out = []
    for name in sorted(BUILTIN_MODELS):
        _, spec = build_builtin(name)
        card = _builtin_card(name, spec)
        out.append(ModelInfo(name, "builtin", card.summary()))
    for name in bundled_names():
        with _bundled_paths(name) as (card_path, _):
            out.append(ModelInfo(name, "bundled", load_card(card_path).summary()))
    return out


def _builtin_card(name: str, spec: Any) -> ModelCard:
    doc = {
        "cheap": "per-pixel colour rule with hand-set weights; for smoke runs and throughput",
        "identity": "returns its input; for checking tiling and stitching",
    }
    return ModelCard.from_spec(
        spec,
        architecture=Architecture(library="builtin", name=name),
        description=doc.get(name, "built-in model"),
    )


# --------------------------------------------------------------------------- formats


def detect_format(path: str | os.PathLike[str]) -> FileFormat:
    """Tell a weights file's format from its first bytes (and zip entries).

    ``"safetensors"`` (8-byte header length, then a JSON header),
    ``"torchscript"`` (a zip with ``constants.pkl`` or ``code/`` entries),
    ``"torch"`` (a ``torch.save`` zip or a legacy pickle) or ``"unknown"``.
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(9)
    size = p.stat().st_size
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch"
        return "unknown"
    if len(head) == 9:
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+ (legacy torch.save)
        return "torch"
    return "unknown"


def _pickle_globals(data: bytes) -> list[str]:
    """Module-level names a pickle refers to, found without running it (pickletools)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # truncated/garbled: report what was seen
        pass
    return list(dict.fromkeys(found))


def _unsafe_globals(path: Path) -> list[str]:
    """Names a torch pickle needs that the weights-only unpickler does not allow."""
    try:
        if zipfile.is_zipfile(path):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        names = _pickle_globals(path.read_bytes())
    except Exception:
        return []
    safe = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")
    return [n for n in names if not n.startswith(safe)]


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with refusals and corruption as one clear line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "detected pickle protocol N"
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        text = str(exc)
        if unsafe or "GLOBAL" in text or "Unsupported global" in text:
            what = ", ".join(unsafe) if unsafe else _last_reason(text)
            raise ModelLoadError(
                f"refusing to load '{path}': it contains pickled code ({what}); {_RESAVE}",
                path=path,
                globals=unsafe,
            ) from None
        raise ModelLoadError(
            f"cannot read '{path}': not a weights-only torch file or corrupt "
            f"({_last_reason(text)}); {_RESAVE}",
            path=path,
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read '{path}': the file is corrupt or truncated "
            f"({type(exc).__name__}: {_last_reason(str(exc))}); re-export the checkpoint",
            path=path,
        ) from None


def _last_reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        m = re.search(r"(Unsupported [^.]*|unsupported GLOBAL \S+)", ln)
        if m:
            return m.group(1)
    return (lines[0] if lines else "no details")[:160]


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for prefix in _PREFIXES:  # DataParallel, torch.compile
        if out and all(k.startswith(prefix) for k in out):
            out = _strip(out, prefix)
    return out


StateDict = dict[str, torch.Tensor]
_Named = tuple[str, nn.Module]


def load_state_dict_file(path: str | os.PathLike[str]) -> tuple[StateDict, dict[str, Any] | None]:
    """Read a weights file safely: ``(state_dict, lightning_hparams_or_None)``.

    Handles safetensors, plain state dicts, ``{"state_dict": ...}`` wrappers and
    Lightning checkpoints (whose ``model.`` prefix is stripped and whose other
    entries, such as a loss's class weights, are dropped).
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu")), None
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read '{p}': the safetensors file is corrupt or truncated ({exc}); "
                "re-export it",
                path=p,
            ) from None
    if fmt == "torchscript":
        raise ModelLoadError(
            f"'{p}' is a TorchScript archive, not a state dict; load it with load_model()",
            path=p,
        )
    if fmt == "unknown":
        raise ModelLoadError(
            f"cannot read '{p}': not a safetensors, torch or TorchScript file (corrupt, "
            f"truncated or another format); {_RESAVE}",
            path=p,
        )
    obj = _torch_load(p)
    hparams: dict[str, Any] | None = None
    if isinstance(obj, Mapping) and "state_dict" in obj and _is_tensor_dict(obj["state_dict"]):
        raw = obj.get("hyper_parameters")
        if isinstance(raw, Mapping):
            hparams = dict(raw)
        state = dict(obj["state_dict"])
        if any(k.startswith("model.") for k in state):
            state = _strip(state, "model.")
        return _normalise_keys(state), hparams
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "model", "net"):
            if key in obj and _is_tensor_dict(obj[key]):
                return _normalise_keys(obj[key]), None
    if _is_tensor_dict(obj):
        return _normalise_keys(obj), None
    raise ModelLoadError(
        f"'{p}' holds a {type(obj).__name__}, not a state dict of tensors; {_RESAVE}", path=p
    )


# --------------------------------------------------------------------------- building


def build_network(arch: Architecture, *, source: str = "card") -> nn.Module:
    """Build the (randomly initialised) network an :class:`Architecture` describes.

    Nothing is downloaded: smp encoders are always built with
    ``encoder_weights=None``.
    """
    if arch.library in ("torchscript", "builtin"):
        raise ModelLoadError(
            f"architecture library '{arch.library}' in {source} has no buildable network; "
            "use load_model()",
        )
    kwargs = dict(arch.kwargs)
    try:
        if arch.library == "smp":
            import segmentation_models_pytorch as smp

            kwargs["encoder_weights"] = None
            cls = getattr(smp, str(arch.name))
            net: nn.Module = cls(**kwargs)
        else:
            from torchgeo.models import FCN

            net = FCN(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in arch.kwargs.items())
        raise ModelLoadError(
            f"cannot build {arch.library}.{arch.name}({args}) from {source}: "
            f"{type(exc).__name__}: {exc}; fix architecture.kwargs in the card",
        ) from None
    return net


def _first_last_conv(net: nn.Module) -> tuple[_Named | None, _Named | None]:
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not convs:
        return None, None
    return convs[0], convs[-1]


def _check_shapes(
    net: nn.Module, state: Mapping[str, torch.Tensor], card: ModelCard, weights: Path, card_src: str
) -> None:
    first, last = _first_last_conv(net)
    if first is not None:
        name, _ = first
        w = state.get(f"{name}.weight")
        if w is not None and w.ndim >= 2 and w.shape[1] != card.input.n_bands:
            raise ModelLoadError(
                f"weights '{weights}' take {w.shape[1]} input band(s) (first layer '{name}') but "
                f"card {card_src} says {card.input.n_bands} (bands {list(card.input.bands)}); "
                "use the card that came with the weights or fix input.bands and "
                "architecture.kwargs.in_channels",
                path=weights,
                weights_bands=int(w.shape[1]),
                card_bands=card.input.n_bands,
            )
    if last is not None:
        name, _ = last
        w = state.get(f"{name}.weight")
        if w is not None and w.ndim >= 1 and w.shape[0] != card.n_classes:
            names = "/".join(c.name for c in card.classes)
            raise ModelLoadError(
                f"weights '{weights}' produce {w.shape[0]} class(es) (last layer '{name}') but "
                f"card {card_src} lists {card.n_classes} ({names}); use the card that came with "
                "the weights or fix classes and architecture.kwargs.classes",
                path=weights,
                weights_classes=int(w.shape[0]),
                card_classes=card.n_classes,
            )


def _load_into(
    net: nn.Module, state: Mapping[str, torch.Tensor], card: ModelCard, weights: Path, card_src: str
) -> nn.Module:
    """Check bands/classes, then ``load_state_dict(strict=True)``; one clear line on mismatch."""
    _check_shapes(net, state, card, weights, card_src)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problem = ""
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[0]})")
        problem = "; ".join(parts) + " parameter(s)"
    else:
        try:
            net.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            problem = _last_reason(str(exc))
    if problem:
        arch = card.architecture
        raise ModelLoadError(
            f"weights '{weights}' do not fit {arch.library}.{arch.name} from card {card_src}: "
            f"{problem}; use the card that came with the weights or fix its architecture",
            path=weights,
        )
    return net


def _check_forward(net: nn.Module, card: ModelCard, weights: Path, card_src: str) -> None:
    """Run a 64² zero tile: the output must be (1, n_classes, 64, 64)."""
    x = torch.zeros(1, card.input.n_bands, 64, 64)
    try:
        with torch.inference_mode():
            out = net(x)
    except Exception as exc:
        raise ModelLoadError(
            f"model '{weights}' fails on a {card.input.n_bands}-band input as card {card_src} "
            f"describes ({type(exc).__name__}: {_last_reason(str(exc))}); fix input.bands in the "
            "card",
            path=weights,
        ) from None
    if isinstance(out, dict):
        out = out.get("out")
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != card.n_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"model '{weights}' returns {shape} but card {card_src} lists {card.n_classes} "
            "classes; fix the card's classes",
            path=weights,
        )


# --------------------------------------------------------------------------- torchgeo


def _class_colour(i: int) -> tuple[int, int, int]:
    if i < len(DEFAULT_CLASSES):
        return DEFAULT_CLASSES[i].color
    # distinct, deterministic colours for more classes
    return ((i * 67) % 256, (i * 149) % 256, (i * 211) % 256)


def card_from_torchgeo_hparams(hparams: Mapping[str, Any], *, name: str) -> ModelCard:
    """A default card for a torchgeo ``SemanticSegmentationTask`` checkpoint.

    The network is the one torchgeo builds (``smp.<Model>(encoder_name=backbone,
    in_channels=..., classes=...)``, or torchgeo's ``FCN``); classes are named
    ``class0..N``; bands are ``1..in_channels`` scaled by 1/255. Give a card to
    say otherwise.
    """
    embedded = hparams.get("terraseg_card")
    if isinstance(embedded, Mapping):  # checkpoints written by terraseg.models.train
        from terraseg.models.card import card_from_dict

        return card_from_dict(embedded, source=f"embedded in checkpoint '{name}'")
    model = str(hparams.get("model", "unet"))
    in_channels = int(hparams.get("in_channels", 3))
    task = str(hparams.get("task", "multiclass"))
    n = int(hparams.get("num_classes") or hparams.get("num_labels") or 1)
    if model == "fcn":
        arch = Architecture(
            library="torchgeo", name="FCN",
            kwargs={"in_channels": in_channels, "classes": n,
                    "num_filters": int(hparams.get("num_filters", 64))},
        )
    elif model in _TORCHGEO_MODELS:
        arch = Architecture(
            library="smp", name=_TORCHGEO_MODELS[model],
            kwargs={"encoder_name": str(hparams.get("backbone", "resnet50")),
                    "in_channels": in_channels, "classes": n},
        )
    else:
        raise ModelLoadError(
            f"checkpoint '{name}' is a torchgeo model '{model}' that terraseg cannot rebuild; "
            f"supported: {', '.join([*_TORCHGEO_MODELS, 'fcn'])}",
        )
    classes = tuple(ClassInfo(id=i, name=f"class{i}", color=_class_colour(i)) for i in range(n))
    return ModelCard(
        name=name,
        input=InputSpec(bands=tuple(range(1, in_channels + 1)), normalization="scale", scale=255.0),
        classes=classes,
        activation="softmax" if task == "multiclass" else "sigmoid",
        architecture=arch,
        description="torchgeo SemanticSegmentationTask checkpoint; card derived from its "
        "hyper-parameters (input scaling 1/255 assumed)",
    )


def _merge_ckpt_card(
    derived: ModelCard, given: ModelCard, weights: Path, card_src: str
) -> ModelCard:
    """Use a given card's classes/input with the checkpoint's own architecture."""
    arch = derived.architecture
    if arch.in_channels is not None and arch.in_channels != given.input.n_bands:
        raise ModelLoadError(
            f"checkpoint '{weights}' was trained with in_channels={arch.in_channels} but card "
            f"{card_src} reads {given.input.n_bands} band(s) {list(given.input.bands)}; fix "
            "input.bands in the card",
            path=weights,
        )
    if arch.out_channels is not None and arch.out_channels != given.n_classes:
        raise ModelLoadError(
            f"checkpoint '{weights}' predicts {arch.out_channels} class(es) but card {card_src} "
            f"lists {given.n_classes}; fix the card's classes",
            path=weights,
        )
    data = given.model_dump()
    data["architecture"] = arch.model_dump()
    return ModelCard.model_validate(data)


# --------------------------------------------------------------------------- public


def resolve_card(
    weights: Path, card: str | os.PathLike[str] | None
) -> tuple[ModelCard | None, str]:
    """The card for ``weights``: the given one, else ``<stem>.card.yaml`` beside it, else None."""
    if card is not None:
        return load_card(card), f"'{card}'"
    beside = card_path_for(weights)
    if beside.exists():
        return load_card(beside), f"'{beside}'"
    return None, "(none)"


def _find_weights_for_card(card_path: Path, card: ModelCard) -> Path:
    if card.weights:
        return card_path.parent / card.weights
    stem = card_path.name[: -len(CARD_SUFFIX)]
    for suffix in WEIGHT_SUFFIXES:
        candidate = card_path.with_name(stem + suffix)
        if candidate.exists():
            return candidate
    raise ModelLoadError(
        f"no weights found for card '{card_path}': expected {stem}.safetensors (or "
        f"{', '.join(stem + s for s in WEIGHT_SUFFIXES[1:])}) beside it; "
        "set 'weights:' in the card",
        path=card_path,
    )


def _load_file(path: Path, card: ModelCard | None, card_src: str) -> tuple[nn.Module, ModelCard]:
    if not path.exists():
        raise ModelLoadError(f"weights file '{path}' does not exist; check the path", path=path)
    if not path.is_file():
        raise ModelLoadError(f"weights path '{path}' is not a file; check the path", path=path)
    if card is not None and card.weights_sha256 and file_sha256(path) != card.weights_sha256:
        raise ModelLoadError(
            f"weights '{path}' do not match the sha256 in card {card_src} (the file was changed "
            "or is corrupt); restore the file, or remove weights_sha256 from the card if the "
            "change is intended",
            path=path,
        )
    fmt = detect_format(path)
    if fmt == "torchscript":
        if card is None:
            raise ModelLoadError(
                f"TorchScript model '{path}' needs a card: put {card_path_for(path).name} beside "
                "it or pass card=...; the card states the bands and classes",
                path=path,
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                jit_load: Any = torch.jit.load
                net: nn.Module = jit_load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read TorchScript '{path}': {_last_reason(str(exc))}; re-export it",
                path=path,
            ) from None
        net = net.float().eval()
        card = card.model_copy(update={"architecture": Architecture(library="torchscript")})
        _check_forward(net, card, path, card_src)
        return net, card

    state, hparams = load_state_dict_file(path)
    if hparams is not None and ("model" in hparams or "terraseg_card" in hparams):
        derived = card_from_torchgeo_hparams(hparams, name=path.stem)
        if card is None:
            card, card_src = derived, "(derived from checkpoint hyper-parameters)"
        else:
            card = _merge_ckpt_card(derived, card, path, card_src)
    if card is None:
        raise ModelLoadError(
            f"no model card for '{path}': expected '{card_path_for(path)}' beside it or pass "
            "card=...; a card states the architecture, bands and classes",
            path=path,
        )
    if card.architecture.library in ("torchscript", "builtin"):
        raise ModelLoadError(
            f"card {card_src} says architecture '{card.architecture.library}' but '{path}' is a "
            f"{fmt} weights file; set architecture (library: smp, name, kwargs) in the card",
            path=path,
        )
    net = build_network(card.architecture, source=f"card {card_src}")
    _load_into(net, state, card, path, card_src)
    return net.float().eval(), card


def load_model(
    name_or_path: str | os.PathLike[str], *, card: str | os.PathLike[str] | None = None
) -> tuple[nn.Module, ModelCard]:
    """Load a model and its card, safely (no code from files ever runs).

    Parameters
    ----------
    name_or_path
        A built-in name (``"cheap"``, ``"identity"``), a bundled name
        (``"demo-semantic"``; see :func:`list_models`), a weights file
        (``.safetensors``, ``.pt``/``.pth`` state dict, torchgeo ``.ckpt``,
        TorchScript), or a ``.card.yaml`` whose weights lie beside it. A name
        without a path separator is looked up among the built-in and bundled
        models first.
    card
        Card to use instead of the ``<stem>.card.yaml`` beside the weights.

    Returns
    -------
    (nn.Module, ModelCard)
        The network in eval mode, float32, on the CPU, and its card
        (``card.to_spec()`` is what the engine needs).

    Raises
    ------
    ModelLoadError
        Unknown name, missing or corrupt file, a pickle that carries code,
        no card, or a card that does not fit the weights (bands, classes,
        architecture). The message names the file and the fix.
    """
    text = os.fspath(name_or_path)
    is_name = isinstance(name_or_path, str) and "/" not in text and os.sep not in text
    if is_name and text in BUILTIN_MODELS:
        if card is not None:
            raise ModelLoadError(
                f"'{text}' is a built-in model; card= applies to checkpoint files only", name=text
            )
        net, spec = build_builtin(text)
        return net.eval(), _builtin_card(text, spec)
    if is_name and text in bundled_names() and not Path(text).exists():
        with _bundled_paths(text) as (card_path, weights_path):
            given = load_card(card) if card is not None else load_card(card_path)
            src = f"'{card}'" if card is not None else f"'{card_path}'"
            return _load_file(weights_path, given, src)
    path = Path(text)
    if not path.exists():
        known = sorted([*BUILTIN_MODELS, *bundled_names()])
        raise ModelLoadError(
            f"model '{text}' is not a known model ({', '.join(known)}) nor an existing file; "
            "check the name or path (terraseg models lists the models)",
            name=text,
        )
    if path.name.endswith(CARD_SUFFIX):
        the_card = load_card(path)
        return _load_file(_find_weights_for_card(path, the_card), the_card, f"'{path}'")
    given_card, src = resolve_card(path, card)
    return _load_file(path, given_card, src)


def save_model(
    net: nn.Module,
    card: ModelCard,
    out: str | os.PathLike[str],
    *,
    dtype: Literal["float32", "float16"] = "float32",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``<out>.safetensors`` and ``<out>.card.yaml`` (with the weights' sha256) atomically.

    ``out`` may end in ``.safetensors``. Floating-point tensors are stored as
    ``dtype`` (``"float16"`` halves the file; :func:`load_model` returns
    float32). Integer buffers (BatchNorm counters) are kept as they are.
    """
    from safetensors.torch import save_file

    out_path = Path(out)
    if out_path.suffix == ".safetensors":
        out_path = out_path.with_suffix("")
    weights_path = out_path.with_name(out_path.name + ".safetensors")
    card_path = out_path.with_name(out_path.name + CARD_SUFFIX)
    check_writable_dir(weights_path.parent)
    target = torch.float16 if dtype == "float16" else torch.float32
    tensors = {
        k: (v.detach().to("cpu", target) if v.is_floating_point() else v.detach().cpu())
        .contiguous()
        for k, v in net.state_dict().items()
    }
    with atomic_output(weights_path, overwrite=overwrite) as tmp_w:
        # one metadata key: several would be written in hash order, and identical weights
        # would not give identical files
        save_file(tensors, str(tmp_w), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_w, 0o666 & ~umask)  # safetensors creates files private (0600)
        final_card = card.model_copy(
            update={"weights": weights_path.name, "weights_sha256": file_sha256(tmp_w)}
        )
        with atomic_output(card_path, overwrite=overwrite) as tmp_c:
            tmp_c.write_text(final_card.to_yaml(), encoding="utf-8")
    return weights_path, card_path
