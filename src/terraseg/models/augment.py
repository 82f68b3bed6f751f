"""Training augmentation on tensors: D4, photometric jitter, scale jitter, blur and noise.

Each transform takes one sample, an image ``x`` of shape ``(band, y, x)``
(float, already scaled) and its class mask ``y`` of shape ``(y, x)`` (long),
and a NumPy generator; geometric ones move both together, photometric ones
touch the image only. Nothing here reads a file or needs more than torch.

Invariants (each one a test):

- geometric transforms keep image and mask aligned: a pixel's class and its
  image values travel together;
- the mask holds only its own values and :data:`~terraseg.models.spec.IGNORE_LABEL`
  (scale jitter pads the mask with it, never with background);
- photometric transforms keep the image within ``[min(0, lo), max(1, hi)]``,
  ``lo``/``hi`` its values before the transform;
- the same generator state gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from terraseg.models.spec import IGNORE_LABEL

__all__ = [
    "AUGMENTATIONS",
    "PRESETS",
    "Augment",
    "augment_names",
    "augment_sample",
]

Sample = tuple[torch.Tensor, torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], Sample]


def _limits(x: torch.Tensor) -> tuple[float, float]:
    return min(0.0, float(x.min())), max(1.0, float(x.max()))


def d4(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """One of the eight rotations/reflections of the square (image and mask together)."""
    k = int(rng.integers(4))
    x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
    if rng.random() < 0.5:
        x, y = torch.flip(x, (2,)), torch.flip(y, (1,))
    return x, y


def brightness(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Multiply by a gain in [0.9, 1.1]."""
    lo, hi = _limits(x)
    gain = float(rng.uniform(0.9, 1.1))
    return (x * gain).clamp(lo, hi), y


def contrast(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Stretch each band about its mean by a factor in [0.8, 1.2]."""
    lo, hi = _limits(x)
    factor = float(rng.uniform(0.8, 1.2))
    mean = x.mean(dim=(1, 2), keepdim=True)
    return (mean + (x - mean) * factor).clamp(lo, hi), y


def _rotate_hue(x: torch.Tensor, angle: float) -> torch.Tensor:
    """The first three bands rotated about the grey axis by ``angle`` radians (not clamped)."""
    c, s = math.cos(angle), math.sin(angle)
    k = 1 / 3
    r = math.sqrt(k)
    # Rodrigues rotation about the unit vector (1, 1, 1)/√3
    rot = torch.tensor(
        [
            [c + k * (1 - c), k * (1 - c) - r * s, k * (1 - c) + r * s],
            [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
            [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)],
        ],
        dtype=x.dtype,
    )
    return torch.cat([torch.einsum("ij,jhw->ihw", rot, x[:3]), x[3:]])


def hue(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Rotate the colour of the first three bands about the grey axis by up to ±18°.

    Images with fewer than three bands are returned unchanged. Grey pixels
    (equal bands) stay grey.
    """
    angle = float(rng.uniform(-0.05, 0.05)) * 2 * math.pi
    if x.shape[0] < 3:
        return x, y
    lo, hi = _limits(x)
    return _rotate_hue(x, angle).clamp(lo, hi), y


def colour(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """On half the samples, any hue and a saturation gain in [0, 1.5] (0: grey).

    Roof colours change from place to place (red and grey iron sheets, orange
    tiles, white concrete), so a model trained on a few places must learn roofs
    by shape and texture, not hue: the first three bands are rotated about the
    grey axis by an angle drawn from the whole circle, then pulled towards or
    pushed away from their per-pixel grey. Images with fewer than three bands
    are returned unchanged; grey pixels stay grey.
    """
    angle = float(rng.uniform(-math.pi, math.pi))
    gain = float(rng.uniform(0.0, 1.5))
    if rng.random() >= 0.5 or x.shape[0] < 3:
        return x, y
    lo, hi = _limits(x)
    rgb = _rotate_hue(x, angle)[:3]
    grey = rgb.mean(dim=0, keepdim=True)
    rgb = grey + (rgb - grey) * gain
    return torch.cat([rgb, x[3:]]).clamp(lo, hi), y


def desaturate(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """On a quarter of the samples, pull the first three bands towards grey by a gain in [0, 0.5].

    A milder form of ``colour``: the hue stays, but a red or orange roof is
    sometimes shown nearly grey (gain 0: fully grey), so the model cannot rely
    on colour alone for the grey, beige and brown iron sheets its training
    places have few of. Images with fewer than three bands are returned
    unchanged; grey pixels stay grey.
    """
    gain = float(rng.uniform(0.0, 0.5))
    if rng.random() >= 0.25 or x.shape[0] < 3:
        return x, y
    lo, hi = _limits(x)
    rgb = x[:3]
    grey = rgb.mean(dim=0, keepdim=True)
    return torch.cat([grey + (rgb - grey) * gain, x[3:]]).clamp(lo, hi), y


def scale(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Zoom by a factor in [0.75, 1.25], keeping the patch size (pixel centres kept aligned).

    The image is resized bilinearly, the mask by nearest neighbour (``nearest-exact``:
    the same pixel centres as bilinear), and a
    window of the original size is cut at a random place. Zooming out pads
    the image with zeros and the mask with ``IGNORE_LABEL`` (unlabelled, not
    background).
    """
    factor = float(rng.uniform(0.75, 1.25))
    rows, cols = y.shape
    new_r, new_c = max(1, round(rows * factor)), max(1, round(cols * factor))
    off_r, off_c = rng.random(), rng.random()
    if (new_r, new_c) == (rows, cols):
        return x, y
    xs = F.interpolate(x[None], size=(new_r, new_c), mode="bilinear", align_corners=False)[0]
    ys = F.interpolate(y[None, None].float(), size=(new_r, new_c), mode="nearest-exact")
    ys = ys[0, 0].long()
    lo, hi = _limits(x)
    xs = xs.clamp(lo, hi)
    out_x = torch.zeros_like(x)
    out_y = torch.full_like(y, IGNORE_LABEL)
    # overlap of the resized patch placed at a random offset (negative: crop)
    dr, dc = round((rows - new_r) * off_r), round((cols - new_c) * off_c)
    r0, c0 = max(dr, 0), max(dc, 0)
    r1, c1 = min(rows, dr + new_r), min(cols, dc + new_c)
    out_x[:, r0:r1, c0:c1] = xs[:, r0 - dr : r1 - dr, c0 - dc : c1 - dc]
    out_y[r0:r1, c0:c1] = ys[r0 - dr : r1 - dr, c0 - dc : c1 - dc]
    return out_x, out_y


def blur(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Gaussian blur, sigma in [0.5, 1.5] px, on a quarter of the samples (edges reflected)."""
    sigma = float(rng.uniform(0.5, 1.5))
    if rng.random() >= 0.25:
        return x, y
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    bands = x.shape[0]
    pad = min(radius, x.shape[1] - 1, x.shape[2] - 1)
    if pad < radius:  # too small to blur with reflection
        return x, y
    img = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, kernel.view(1, 1, 1, -1).repeat(bands, 1, 1, 1), groups=bands)
    img = F.conv2d(img, kernel.view(1, 1, -1, 1).repeat(bands, 1, 1, 1), groups=bands)
    return img[0], y


def noise(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Sample:
    """Add Gaussian noise, sigma in [0, 0.03] (scaled units), on a quarter of the samples."""
    sigma = float(rng.uniform(0.0, 0.03))
    if rng.random() >= 0.25:
        return x, y
    seed = int(rng.integers(2**31))
    gen = torch.Generator().manual_seed(seed)
    lo, hi = _limits(x)
    return (x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * sigma).clamp(lo, hi), y


AUGMENTATIONS: dict[str, Augment] = {
    "d4": d4,
    "brightness": brightness,
    "contrast": contrast,
    "hue": hue,
    "colour": colour,
    "desaturate": desaturate,
    "scale": scale,
    "blur": blur,
    "noise": noise,
}
"""Augmentations by name, applied in this order whatever order they are given in."""

def _ordered(*names: str) -> tuple[str, ...]:
    return tuple(name for name in AUGMENTATIONS if name in names)


_FULL = ("d4", "brightness", "contrast", "hue", "scale", "blur", "noise")

PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "basic": _ordered("d4", "brightness"),
    "full": _ordered(*_FULL),
    "muted": _ordered(*_FULL, "desaturate"),
    "places": _ordered(*_FULL, "colour"),
}
"""Named sets: ``basic`` (flips/rotations and ±10 % gain, the default, as before
issue 17), ``full`` (geometry, photometric jitter, scale, blur and noise: for real
imagery), ``muted`` (``full`` and ``desaturate``: roofs sometimes shown nearly
grey), ``places`` (``full`` and any-hue ``colour``, for models that must work in
places whose roofs look unlike the training places'), ``none``. Each preset
applies its names in :data:`AUGMENTATIONS` order."""


def augment_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """The augmentations a setting names, in application order.

    Raises
    ------
    ValueError
        An unknown preset or augmentation name (the message lists the known ones).

    Examples
    --------
    >>> augment_names("basic")
    ('d4', 'brightness')
    >>> augment_names(["noise", "d4"])
    ('d4', 'noise')
    """
    if isinstance(value, str):
        if value in PRESETS:
            return PRESETS[value]
        value = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in value if v not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {unknown}; use a preset ({', '.join(PRESETS)}) or names "
            f"from {', '.join(AUGMENTATIONS)}"
        )
    return tuple(name for name in AUGMENTATIONS if name in value)


def augment_sample(
    x: torch.Tensor, y: torch.Tensor, names: Sequence[str], rng: np.random.Generator
) -> Sample:
    """Apply the named augmentations (see :data:`AUGMENTATIONS`) to one image/mask sample."""
    for name in names:
        x, y = AUGMENTATIONS[name](x, y, rng)
    return x, y
