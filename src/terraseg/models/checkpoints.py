"""Reading weights files safely: formats, weights-only pickles, state dicts, torchgeo checkpoints.

A model file must never be able to run code. Weights are read with
:func:`safetensors.torch.load_file` or ``torch.load(..., weights_only=True)``;
a pickle that refers to anything but tensors and plain containers is refused
with :class:`~terraseg.errors.ModelLoadError` before any of it runs. The kind
of file is detected from its contents, not its suffix. A torchgeo
``SemanticSegmentationTask`` checkpoint's hyper-parameters describe its
network, from which a default card is derived.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from terraseg.errors import ModelLoadError
from terraseg.models.card import Architecture, ModelCard
from terraseg.models.spec import DEFAULT_CLASSES, ClassInfo, InputSpec

__all__ = [
    "RESAVE",
    "FileFormat",
    "StateDict",
    "card_from_torchgeo_hparams",
    "detect_format",
    "last_reason",
    "load_state_dict_file",
    "merge_checkpoint_card",
]

FileFormat = Literal["safetensors", "torch", "torchscript", "unknown"]
StateDict = dict[str, torch.Tensor]
RESAVE = "re-save it as a state dict (torch.save(model.state_dict(), path)) or safetensors"
"""The fix offered for a weights file that cannot be read safely."""

# torchgeo SemanticSegmentationTask(model=...) → smp class, as in its configure_models()
_TORCHGEO_MODELS = {
    "unet": "Unet",
    "deeplabv3+": "DeepLabV3Plus",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
_PREFIXES = ("module.", "_orig_mod.")


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
            what = ", ".join(unsafe) if unsafe else last_reason(text)
            raise ModelLoadError(
                f"refusing to load '{path}': it contains pickled code ({what}); {RESAVE}",
                path=path,
                globals=unsafe,
            ) from None
        raise ModelLoadError(
            f"cannot read '{path}': not a weights-only torch file or corrupt "
            f"({last_reason(text)}); {RESAVE}",
            path=path,
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read '{path}': the file is corrupt or truncated "
            f"({type(exc).__name__}: {last_reason(str(exc))}); re-export the checkpoint",
            path=path,
        ) from None


def last_reason(text: str) -> str:
    """The telling line of an exception's text (an 'Unsupported ...' reason, else the first)."""
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
            f"truncated or another format); {RESAVE}",
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
        f"'{p}' holds a {type(obj).__name__}, not a state dict of tensors; {RESAVE}", path=p
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


def merge_checkpoint_card(
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
