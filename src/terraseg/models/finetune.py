"""Fine-tuning: fit a trained network's first convolution to another number of bands.

A model trained on 3-band RGB can start the training of a 1-band
(panchromatic) or 4-band (RGB + NIR) model. Input channel ``j`` of the new
kernel takes the old channels ``c`` with ``c % new == j`` (fewer bands: their
kernels are summed; one band sums all) or the old channel ``j % old`` divided
by its number of copies (more bands: repeated cyclically). Either way a grey
input (every band equal) gives the activations it gave before. Every other
weight is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["adapt_input_conv", "first_conv_key"]


def first_conv_key(state: Mapping[str, torch.Tensor], in_channels: int) -> str | None:
    """The key of the first 4-D weight with ``in_channels`` inputs (state dicts keep order)."""
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4 and value.shape[1] == in_channels:
            return key
    return None


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv kernel ``(out, old, kh, kw)`` fitted to ``in_channels`` inputs.

    Examples
    --------
    >>> w = torch.ones(2, 3, 1, 1)
    >>> adapt_input_conv(w, 1)[:, :, 0, 0].tolist()
    [[3.0], [3.0]]
    >>> adapt_input_conv(w, 4)[0, :, 0, 0].tolist()  # R split over bands 1 and 4
    [0.5, 1.0, 1.0, 0.5]
    """
    old = weight.shape[1]
    if in_channels == old:
        return weight
    if in_channels < old:
        return torch.stack([weight[:, j::in_channels].sum(1) for j in range(in_channels)], 1)
    idx = torch.arange(in_channels) % old
    copies = torch.bincount(idx, minlength=old).to(weight.dtype)
    return weight[:, idx] / copies[idx].view(1, -1, 1, 1)
