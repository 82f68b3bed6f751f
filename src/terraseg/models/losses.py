"""Training losses that skip unlabelled pixels and take class weights.

Every loss ignores :data:`~terraseg.models.spec.IGNORE_LABEL` pixels: their
logits change nothing. ``ce`` and ``focal`` take per-class weights;
``ce+dice`` weights its cross-entropy term.

- ``ce``: cross-entropy (torch);
- ``focal``: smp's multiclass focal loss (one-vs-rest, gamma 2, normalised,
  as torchgeo configures it), or its class-weighted sum when weights are given;
- ``jaccard``: soft IoU over the labelled pixels (smp's ``JaccardLoss``
  cannot skip a label value: it one-hot encodes 255 and fails);
- ``dice``: smp's multiclass Dice;
- ``ce+dice``: their sum;
- ``lovasz``: smp's Lovász-softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LOSSES", "SoftJaccardLoss", "SumLoss", "WeightedFocalLoss", "build_loss"]

LOSSES = ("ce", "focal", "jaccard", "dice", "ce+dice", "lovasz")


class SumLoss(nn.Module):
    """The sum of several losses over the same logits and targets (cross-entropy + Dice)."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=y_hat.device)
        for loss in self.losses:
            total = total + loss(y_hat, y)
        return total


class SoftJaccardLoss(nn.Module):
    """``1 - soft IoU`` per class over the labelled pixels, averaged over the classes.

    Classes absent from the labelled pixels of the batch contribute 0 (as in
    smp's ``JaccardLoss``).
    """

    def __init__(self, ignore_index: int | None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n_classes = y_hat.shape[1]
        probs = y_hat.float().softmax(1).flatten(2)  # (N, C, HW)
        target = y.flatten(1)
        valid = (
            torch.ones_like(target, dtype=torch.bool)
            if self.ignore_index is None
            else target != self.ignore_index
        )
        onehot = nn.functional.one_hot(target.clamp(0, n_classes - 1) * valid, n_classes)
        onehot = onehot.permute(0, 2, 1).to(probs.dtype) * valid[:, None]
        probs = probs * valid[:, None]
        inter = (probs * onehot).sum((0, 2))
        union = probs.sum((0, 2)) + onehot.sum((0, 2)) - inter
        score = inter / union.clamp_min(1e-7)
        present = onehot.sum((0, 2)) > 0
        return ((1 - score) * present).mean()


class WeightedFocalLoss(nn.Module):
    """smp's multiclass focal loss (one-vs-rest per class, normalised) with a weight per class."""

    def __init__(self, weights: Sequence[float], ignore_index: int | None) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))
        self.ignore_index = ignore_index

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from segmentation_models_pytorch.losses._functional import focal_loss_with_logits

        keep = (
            torch.ones_like(y, dtype=torch.bool)
            if self.ignore_index is None
            else (y != self.ignore_index)
        )
        total = torch.zeros((), device=y_hat.device)
        weights: torch.Tensor = self.weights  # type: ignore[assignment]
        for c in range(y_hat.shape[1]):
            target = (y == c).to(y_hat.dtype)[keep]
            loss = focal_loss_with_logits(y_hat[:, c][keep], target, normalized=True)
            total = total + weights[c] * loss
        return total


def build_loss(
    name: str, *, ignore_index: int | None, class_weights: Sequence[float] | None
) -> nn.Module:
    """The loss ``name`` (one of :data:`LOSSES`), skipping ``ignore_index`` pixels.

    Raises
    ------
    ValueError
        An unknown loss name.
    """
    import segmentation_models_pytorch as smp

    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    ce_ignore = -1000 if ignore_index is None else ignore_index
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=ce_ignore, weight=weight)
    if name == "focal":
        if class_weights is None:
            focal: nn.Module = smp.losses.FocalLoss(
                "multiclass", ignore_index=ignore_index, normalized=True
            )
            return focal
        return WeightedFocalLoss(class_weights, ignore_index)
    if name == "jaccard":
        return SoftJaccardLoss(ignore_index)
    if name == "lovasz":
        lovasz: nn.Module = smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index)
        return lovasz
    dice: nn.Module = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index)
    if name == "dice":
        return dice
    if name == "ce+dice":
        return SumLoss(nn.CrossEntropyLoss(ignore_index=ce_ignore, weight=weight), dice)
    raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
