"""Mask R-CNN (torchvision) for buildings, and how the engine runs it.

:func:`build_maskrcnn` builds a small torchvision ``MaskRCNN`` that trains from
random weights on a CPU: a MobileNetV3-Large trunk with a 4-level FPN from
stride 4 (houses at 0.5 m are 10-40 px across, below the reach of the usual
stride-16 MobileNet detector), anchors from 8 px, no image resizing (tiles are
run at their own scale, as they were trained).

:class:`DenseDetections` turns the detector's per-tile boxes, masks and scores
into the dense *boundary* layout the engine stitches for every instance model
(background, building interior, road, building edge): each detection's mask is
painted with its score (higher scores win shared pixels), and the pixels of a
building within ``edge_px`` of another building become its edge ring, exactly
the targets a boundary model is trained on
(:func:`terraseg.instances.targets.boundary_classes`). The tile lattice, the
seam-free blending of overlapping tiles and the exact cross-chunk instance merge
then apply unchanged, so a detector's polygons do not depend on the chunking,
and each building's score is the mean of its detection scores (its blended
building probability).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from terraseg.instances.targets import EDGE_CLASS, boundary_classes

__all__ = ["DETECTOR_DEFAULTS", "DenseDetections", "build_maskrcnn"]

DETECTOR_DEFAULTS: dict[str, Any] = {
    "backbone": "mobilenet_v3_large",
    "in_channels": 3,
    "num_classes": 2,
    "fpn_channels": 128,
    "representation": 256,
    "anchor_px": [8, 16, 32, 64, 128],
    "detections_per_img": 200,
    "score_thresh": 0.3,
    "rois_per_image": 128,
}
"""Constructor arguments of the bundled detector (``architecture.kwargs`` of its card)."""

# MobileNetV3-Large feature blocks that end each stride (4, 8, 16, 32) and their widths.
_RETURN = {"3": "0", "6": "1", "12": "2", "16": "3"}
_WIDTHS = [24, 40, 112, 960]


def build_maskrcnn(
    *,
    backbone: str = "mobilenet_v3_large",
    in_channels: int = 3,
    num_classes: int = 2,
    fpn_channels: int = 128,
    representation: int = 256,
    anchor_px: list[int] | tuple[int, ...] = (8, 16, 32, 64, 128),
    detections_per_img: int = 200,
    score_thresh: float = 0.3,
    rois_per_image: int = 128,
) -> nn.Module:
    """A torchvision ``MaskRCNN`` with random weights (nothing is downloaded).

    Parameters
    ----------
    backbone
        ``"mobilenet_v3_large"`` (the only trunk offered: small and fast on CPUs).
    in_channels
        Input bands; inputs are expected scaled to about ``[0, 1]``.
    num_classes
        Including background (2: background, building).
    fpn_channels, representation
        FPN width and box-head width (they set the file size: about 5.5 M
        parameters with the defaults, 11 MB in float16).
    anchor_px
        Anchor size of each of the five FPN levels (strides 4 to 64), pixels.
    detections_per_img, score_thresh
        At most this many detections per tile, scoring at least ``score_thresh``.
    rois_per_image
        Proposals sampled per training image for the box and mask heads (a quarter
        positive at most); fewer make a training step cheaper.
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if backbone != "mobilenet_v3_large":
        raise ValueError(f"unknown detector backbone {backbone!r}; use 'mobilenet_v3_large'")
    if len(anchor_px) != 5:
        raise ValueError(f"anchor_px needs 5 sizes (one per FPN level), got {list(anchor_px)}")
    trunk = mobilenet_v3_large(weights=None).features
    if in_channels != 3:
        first = trunk[0][0]
        trunk[0][0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size,
                                first.stride, first.padding, bias=False)
    body = BackboneWithFPN(trunk, _RETURN, _WIDTHS, fpn_channels)
    anchors = AnchorGenerator(tuple((int(a),) for a in anchor_px), ((0.5, 1.0, 2.0),) * 5)
    levels = ["0", "1", "2", "3"]
    net = MaskRCNN(
        body,
        num_classes=None,
        min_size=64,
        max_size=4096,
        image_mean=[0.5] * in_channels,
        image_std=[0.25] * in_channels,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        box_detections_per_img=detections_per_img,
        box_score_thresh=score_thresh,
        box_batch_size_per_image=rois_per_image,
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
    )
    _no_resize(net)
    built: nn.Module = net
    return built


def _no_resize(net: nn.Module) -> None:
    """Run images at their own scale: tiles are predicted as the chips were trained."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class _SameScale(GeneralizedRCNNTransform):  # type: ignore[misc]
        def resize(self, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
            return image, target

    old: Any = net.transform
    net.transform = _SameScale(old.min_size, old.max_size, old.image_mean, old.image_std,
                               size_divisible=32)


class DenseDetections(nn.Module):
    """A detector as dense boundary-layout probabilities ``(B, 4, H, W)``.

    Channels: background, building interior, road (always 0), building edge;
    they sum to 1. A pixel covered by a detection's mask (``mask_thresh``)
    takes the detection's score as building probability (interior, or edge
    where another detection lies within ``edge_px``); where masks overlap the
    higher score wins.
    """

    def __init__(
        self, detector: nn.Module, *, building_label: int = 1, mask_thresh: float = 0.5,
        edge_px: int = 2, sub_batch: int = 2,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.building_label = building_label
        self.mask_thresh = mask_thresh
        self.edge_px = edge_px
        self.sub_batch = sub_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[dict[str, torch.Tensor]] = []
        for start in range(0, x.shape[0], self.sub_batch):  # pasted masks are (n, H, W) each
            outs.extend(self.detector(list(x[start:start + self.sub_batch].float())))
        h, w = x.shape[-2:]
        dense = [self.render(o, (h, w)) for o in outs]
        return torch.from_numpy(np.stack(dense)).to(x.device)

    def render(self, out: dict[str, torch.Tensor], shape: tuple[int, int]) -> np.ndarray:
        """One image's detections as ``(4, H, W)`` float32 probabilities."""
        ids, score = self.paint(out, shape)
        cls = boundary_classes(ids, np.zeros(shape, np.uint8), edge_px=self.edge_px)
        dense = np.zeros((4, *shape), np.float32)
        dense[1] = np.where(cls == 1, score, 0.0)
        dense[3] = np.where(cls == EDGE_CLASS, score, 0.0)
        dense[0] = 1.0 - dense[1] - dense[3]
        return dense

    def paint(
        self, out: dict[str, torch.Tensor], shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Instance ids ``1..n`` (by falling score) and each pixel's score."""
        ids = np.zeros(shape, np.int32)
        score = np.zeros(shape, np.float32)
        keep = out["labels"] == self.building_label
        scores = out["scores"][keep].detach().float().cpu().numpy()
        masks = out["masks"][keep].detach().float().cpu().numpy()
        for n, k in enumerate(np.argsort(-scores, kind="stable"), start=1):
            m = (masks[k, 0] >= self.mask_thresh) & (ids == 0)
            ids[m] = n
            score[m] = scores[k]
        return ids, score
