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

The kind of file is detected from its contents, not its suffix
(:mod:`terraseg.models.checkpoints`); networks are built and checked against
their cards in :mod:`terraseg.models.networks`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.resources.abc
import logging
import os
import warnings
from collections.abc import Iterator
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
from terraseg.models.checkpoints import (
    FileFormat,
    StateDict,
    card_from_torchgeo_hparams,
    detect_format,
    last_reason,
    load_state_dict_file,
    merge_checkpoint_card,
)
from terraseg.models.networks import build_network, check_forward, load_into
from terraseg.models.spec import ModelSpec

__all__ = [
    "WEIGHT_SUFFIXES",
    "FileFormat",
    "ModelInfo",
    "StateDict",
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

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".ts", ".jit")


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


def _builtin_card(name: str, spec: ModelSpec) -> ModelCard:
    doc = {
        "cheap": "per-pixel colour rule with hand-set weights; for smoke runs and throughput",
        "identity": "returns its input; for checking tiling and stitching",
    }
    return ModelCard.from_spec(
        spec,
        architecture=Architecture(library="builtin", name=name),
        description=doc.get(name, "built-in model"),
    )


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
                f"cannot read TorchScript '{path}': {last_reason(str(exc))}; re-export it",
                path=path,
            ) from None
        net = net.float().eval()
        card = card.model_copy(update={"architecture": Architecture(library="torchscript")})
        check_forward(net, card, path, card_src)
        return net, card

    state, hparams = load_state_dict_file(path)
    if hparams is not None and ("model" in hparams or "terraseg_card" in hparams):
        derived = card_from_torchgeo_hparams(hparams, name=path.stem)
        if card is None:
            card, card_src = derived, "(derived from checkpoint hyper-parameters)"
        else:
            card = merge_checkpoint_card(derived, card, path, card_src)
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
    load_into(net, state, card, path, card_src)
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
