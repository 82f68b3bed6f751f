"""Built-in models that need no weights file.

``cheap`` is a per-pixel (1×1 convolution) colour classifier with fixed,
hand-set weights: it separates vegetation, grey paved surfaces and other
surfaces by colour. It is meant for measuring the engine's own throughput and
for smoke runs, not for quality; trained models come from checkpoints.
``identity`` returns its input bands as scores (used to check that tiling and
stitching give the input back exactly).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from terraseg.errors import ModelLoadError
from terraseg.models.spec import DEFAULT_CLASSES, ClassInfo, InputSpec, ModelSpec

__all__ = ["BUILTIN_MODELS", "CheapColorModel", "IdentityModel", "build_builtin"]


class CheapColorModel(nn.Module):
    """Per-pixel linear scores from RGB: background (green/dark), building, road (grey)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=1, bias=True)
        bias = self.conv.bias
        assert bias is not None  # bias=True
        with torch.no_grad():
            # rows: background, building, road; columns: r, g, b (inputs scaled to 0..1)
            self.conv.weight.copy_(
                torch.tensor(
                    [[-2.0, 4.0, -2.0], [3.0, -1.5, -1.5], [1.0, 1.0, 1.0]]
                ).reshape(3, 3, 1, 1)
            )
            bias.copy_(torch.tensor([0.2, 0.0, -1.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class IdentityModel(nn.Module):
    """Returns its input: tiling and blending must then reproduce the scene exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _cheap() -> tuple[nn.Module, ModelSpec]:
    spec = ModelSpec(name="cheap", input=InputSpec(bands=(1, 2, 3)), classes=DEFAULT_CLASSES)
    return CheapColorModel(), spec


def _identity() -> tuple[nn.Module, ModelSpec]:
    classes = tuple(ClassInfo(id=i, name=f"band{i + 1}", color=(0, 0, 0)) for i in range(3))
    spec = ModelSpec(
        name="identity",
        input=InputSpec(bands=(1, 2, 3), normalization="scale", scale=1.0),
        classes=classes,
        activation="identity",
    )
    return IdentityModel(), spec


BUILTIN_MODELS: dict[str, Callable[[], tuple[nn.Module, ModelSpec]]] = {
    "cheap": _cheap,
    "identity": _identity,
}


def build_builtin(name: str) -> tuple[nn.Module, ModelSpec]:
    """Build a built-in model and its spec by name."""
    try:
        factory = BUILTIN_MODELS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model '{name}'; built-in models are {', '.join(sorted(BUILTIN_MODELS))}, "
            "or pass a path to a checkpoint",
            name=name,
        ) from None
    return factory()
