"""Networks from cards: build the architecture, fit the weights to it, check one forward pass.

Nothing is downloaded: smp encoders are always built with
``encoder_weights=None``. A state dict that does not fit the card's bands,
classes or architecture is refused with one line naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terraseg.errors import ModelLoadError
from terraseg.models.card import Architecture, ModelCard
from terraseg.models.checkpoints import last_reason

__all__ = ["SMP_ALIASES", "build_network", "check_forward", "load_into", "smp_architecture"]

SMP_ALIASES = {
    "unet": "Unet",
    "unet++": "UnetPlusPlus",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3+": "DeepLabV3Plus",
    "deeplabv3plus": "DeepLabV3Plus",
}
"""Short names of the smp architectures for training (``--arch``), lower case."""

DEFAULT_ENCODER = "tu-resnet10t"
"""Encoder of ``--arch`` without ``--encoder``: timm's ResNet-10-T (4.9 M parameters)."""

_Named = tuple[str, nn.Module]


def build_network(
    arch: Architecture,
    *,
    source: str = "card",
    fix: str = "fix architecture.kwargs in the card",
) -> nn.Module:
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
        elif arch.library == "torchvision":
            from terraseg.models.detector import build_maskrcnn

            net = build_maskrcnn(**kwargs)
        else:
            from torchgeo.models import FCN

            net = FCN(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in arch.kwargs.items())
        raise ModelLoadError(
            f"cannot build {arch.library}.{arch.name}({args}) from {source}: "
            f"{type(exc).__name__}: {last_reason(str(exc))}; {fix}",
        ) from None
    return net


def smp_architecture(arch: str | None, encoder: str | None) -> dict[str, Any]:
    """The ``{library, name, kwargs}`` of an smp network from short names.

    ``arch`` is an smp class name or alias (:data:`SMP_ALIASES`, any case),
    default ``Unet``; ``encoder`` any smp or timm (``tu-...``) encoder, default
    :data:`DEFAULT_ENCODER`. smp's defaults do the rest (encoder depth 5, so
    patches are multiples of 32); ``in_channels`` and ``classes`` are filled
    in by training. Unknown names are refused when the network is built.

    Examples
    --------
    >>> smp_architecture("deeplabv3+", "resnet18")
    {'library': 'smp', 'name': 'DeepLabV3Plus', 'kwargs': {'encoder_name': 'resnet18'}}
    """
    name = "Unet" if arch is None else SMP_ALIASES.get(arch.lower(), arch)
    return {
        "library": "smp",
        "name": name,
        "kwargs": {"encoder_name": encoder or DEFAULT_ENCODER},
    }


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


def load_into(
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
            problem = last_reason(str(exc))
    if problem:
        arch = card.architecture
        raise ModelLoadError(
            f"weights '{weights}' do not fit {arch.library}.{arch.name} from card {card_src}: "
            f"{problem}; use the card that came with the weights or fix its architecture",
            path=weights,
        )
    return net


def check_forward(net: nn.Module, card: ModelCard, weights: Path, card_src: str) -> None:
    """Run a 64² zero tile: the output must be (1, n_classes, 64, 64)."""
    x = torch.zeros(1, card.input.n_bands, 64, 64)
    try:
        with torch.inference_mode():
            out = net(x)
    except Exception as exc:
        raise ModelLoadError(
            f"model '{weights}' fails on a {card.input.n_bands}-band input as card {card_src} "
            f"describes ({type(exc).__name__}: {last_reason(str(exc))}); fix input.bands in the "
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
