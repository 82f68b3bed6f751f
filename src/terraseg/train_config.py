"""Training settings: :class:`TrainConfig`, shared by ``terraseg train``, a workflow's
``train:`` stage (:class:`terraseg.config.TrainStageConfig`) and
:func:`terraseg.models.train.train_semantic`.

Plain data only (no torch objects), validated by pydantic with ``extra="forbid"``;
re-exported by :mod:`terraseg.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from terraseg.errors import ConfigError

__all__ = ["AUGMENT_NAMES", "AUGMENT_PRESETS", "TrainConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


AUGMENT_NAMES = (
    "d4", "brightness", "contrast", "hue", "colour", "desaturate", "scale", "blur", "noise",
)
"""Training augmentations (:data:`terraseg.models.augment.AUGMENTATIONS`, same order)."""
AUGMENT_PRESETS = ("none", "basic", "full", "muted", "places")
"""Named sets of augmentations (:data:`terraseg.models.augment.PRESETS`)."""


class TrainConfig(_Model):
    """How to train a semantic model: :func:`terraseg.models.train.train_semantic`'s settings.

    Plain data only (no torch objects), so a workflow's ``train:`` section
    (:class:`TrainStageConfig`) and the library share it. ``architecture`` and
    ``classes`` are mappings here; the models layer validates them into its
    ``Architecture`` and ``ClassInfo`` (instances of those are accepted too).
    """

    val_fraction: float = Field(
        default=0.2,
        description="Share of each training image (its southern strip, whole patches) held out "
        "for validation when no validation scenes are given; between 0 and 1.",
    )
    architecture: dict[str, Any] | None = Field(
        default=None,
        description="Network as {library: smp, name, kwargs}; in_channels and classes are filled "
        "in. Default: the demo U-Net (timm ResNet-10-T encoder, depth 4).",
    )
    arch: str | None = Field(
        default=None,
        description="Short for architecture: an smp network, Unet, UnetPlusPlus (unet++), FPN or "
        "DeepLabV3Plus (deeplabv3+), with 'encoder' and smp's defaults (encoder depth 5).",
    )
    encoder: str | None = Field(
        default=None,
        description="Encoder of 'arch': any smp or timm ('tu-...') encoder, built with random "
        "weights (nothing is downloaded); default tu-resnet10t.",
    )
    classes: list[dict[str, Any]] | None = Field(
        default=None,
        description="Output classes as [{id, name, color}], ids 0..K-1. Default: background, "
        "building, road.",
    )
    layers: dict[str, int] | None = Field(
        default=None,
        description="Vector layer -> class id, burned in this order (later over earlier). "
        "Default: roads=2, then buildings=1.",
    )
    bands: tuple[int, ...] = Field(
        default=(1, 2, 3), description="1-based image bands the model reads, in model order."
    )
    scale: float = Field(default=255.0, description="Divisor that scales pixel values.")
    epochs: int | None = Field(
        default=None,
        gt=0,
        description="Epochs of steps_per_epoch steps (with max_steps: whichever ends first).",
    )
    max_steps: int | None = Field(
        default=None, gt=0, description="Optimiser steps (with epochs: whichever ends first)."
    )
    steps_per_epoch: int = Field(default=100, description="Optimiser steps per epoch, >= 1.")
    batch_size: int = Field(default=8, description="Patches per step, >= 1.")
    patch_px: int = Field(
        default=256,
        gt=0,
        description="Training patch size, pixels: >= 32 and a multiple of 2^encoder depth.",
    )
    lr: float = Field(default=2e-3, description="AdamW peak learning rate (one-cycle schedule).")
    task: Literal["semantic", "boundary", "detection"] = Field(
        default="semantic",
        description="'semantic': classes as labelled; 'boundary': buildings split into interior "
        "and an edge ring (class 'building edge'), so touching buildings become separate "
        "instances (seeded watershed at predict time); 'detection': a Mask R-CNN building "
        "detector (boxes, masks, scores).",
    )
    edge_px: int = Field(
        default=2,
        ge=1,
        description="Width of the building edge ring of task 'boundary', pixels.",
    )
    loss: Literal["ce", "focal", "jaccard", "dice", "ce+dice", "lovasz"] = Field(
        default="ce",
        description="Loss: 'ce' (cross-entropy), 'focal', 'jaccard' (soft IoU), 'dice', "
        "'ce+dice' (their sum: thin classes such as the building edge need the Dice term) or "
        "'lovasz' (Lovász-softmax); all skip unlabelled pixels (255).",
    )
    class_weights: list[float] | None = Field(
        default=None,
        description="Per-class loss weights for 'ce', 'ce+dice' and 'focal', one per class.",
    )
    augment: str | list[str] = Field(
        default="basic",
        description="Training augmentation: 'basic' (D4 flips/rotations and a ±10 % gain), "
        "'full' (also contrast, hue, scale ±25 %, blur, noise: for real imagery), 'muted' "
        "('full' and desaturate: a quarter of the patches pulled towards grey), 'places' "
        "('full' and colour: any hue, saturation 0-1.5, for models meant for unseen places), "
        "'none', or a list of names from d4, brightness, contrast, hue, colour, desaturate, "
        "scale, blur, noise.",
    )
    label_extent: str | list[str] | None = Field(
        default=None,
        description="Vector file(s) of the area that is labelled, any CRS: one for all training "
        "images or one per image. Label pixels outside are unlabelled (255) and count in no loss "
        "or metric; patches and the held-out strip are drawn within the extent's bounding box.",
    )
    val_label_extent: str | list[str] | None = Field(
        default=None,
        description="label_extent of the validation scenes (val_image): one for all or one per "
        "scene; validation counts only the pixels inside.",
    )
    gsd_m: float | None = Field(
        default=None,
        gt=0,
        description="Resample training and validation images to this GSD, metres per pixel, "
        "before training (average when coarser, bilinear when finer; vector labels rasterized "
        "on the new grid, class rasters read with nearest); the card's gsd_m. Default: each "
        "image's own GSD.",
    )
    monitor: str = Field(
        default="val_miou",
        description="Validation metric (measured after every epoch) that picks the epoch whose "
        "weights are kept: val_miou, val_pixel_accuracy, val_iou_<class> (val_iou_building) or, "
        "for task 'boundary', val_f1_building (building F1@0.5 per patch).",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many epochs without a better 'monitor' (early stopping); "
        "null: run every epoch.",
    )
    init_from: str | None = Field(
        default=None,
        description="Start from this model's weights (a bundled name such as 'demo-instance', or "
        "a checkpoint path): fine-tuning. Its task and classes must be the ones trained; its "
        "architecture is used, its first convolution fitted when the band count differs.",
    )
    seed: int = Field(default=0, description="Seeds Lightning, the samplers and augmentations.")
    name: str | None = Field(
        default=None, description="Model name in the card (default: the output stem)."
    )
    description: str = Field(default="", description="One line for the card.")
    dtype: Literal["float32", "float16"] = Field(
        default="float32", description="Storage dtype of the weights (float16 halves the file)."
    )
    gsd_tolerance: float = Field(
        default=0.25, description="Relative GSD mismatch the card tolerates without a warning."
    )
    accelerator: str = Field(
        default="auto",
        description="Lightning accelerator: 'auto' (the GPU when torch sees one, else the CPU), "
        "'cpu', 'gpu'.",
    )
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        default="auto",
        description="Arithmetic of training: 'auto' (bf16-mixed on a GPU that has bfloat16 and "
        "on a CPU with native bfloat16 (AVX512-BF16 or AMX), 16-mixed on other GPUs, else "
        "'32'), '32' (float32 throughout), 'bf16-mixed' or '16-mixed' (GPU only). Mixed "
        "precision also lays tensors out channels-last; it is about 3x faster on such CPUs.",
    )
    max_minutes: float | None = Field(
        default=None,
        ge=0,
        description="Pause after the first epoch that ends past this many minutes; the state "
        "is kept in <out>.resume.ckpt and the same settings with resume continue it.",
    )
    resume: bool = Field(
        default=False,
        description="Continue the paused or interrupted run in <out>.resume.ckpt (refused if "
        "its settings or data differ).",
    )
    num_workers: int = Field(default=0, description="DataLoader worker processes.")
    progress: bool = Field(default=False, description="Show Lightning's progress bar.")
    command: str | None = Field(
        default=None, description="How to reproduce the run, recorded in the card."
    )
    data_notes: list[str] = Field(
        default_factory=list,
        description="Training data as recorded in the card (default: the image file names).",
    )

    @field_validator("architecture", "classes", mode="before")
    @classmethod
    def _plain(cls, value: object) -> object:
        """Accept pydantic objects (``Architecture``, ``ClassInfo``) as their data."""
        if isinstance(value, BaseModel):
            return value.model_dump()
        if isinstance(value, list | tuple):
            return [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
        return value

    @field_validator("batch_size", "steps_per_epoch")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be ≥ 1, got {value}")
        return value

    @field_validator("augment")
    @classmethod
    def _augment(cls, value: str | list[str]) -> str | list[str]:
        """Known names only, so a workflow's typo fails at load (``terraseg validate``)."""
        if isinstance(value, str) and value in AUGMENT_PRESETS:
            return value
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        unknown = [v for v in names if v not in AUGMENT_NAMES]
        if unknown:
            raise ValueError(
                f"augment: unknown augmentation(s) {unknown}; use a preset "
                f"({', '.join(AUGMENT_PRESETS)}) "
                f"or names from {', '.join(AUGMENT_NAMES)}"
            )
        return value

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {value}")
        return value

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"bands must be 1-based band numbers, got {list(value)}")
        return value

    @classmethod
    def checked(cls, settings: Mapping[str, object]) -> TrainConfig:
        """``TrainConfig(**settings)``, with problems raised as one :class:`ConfigError`.

        Raises
        ------
        ConfigError
            An unknown setting or an invalid value, all problems in one line.
        """
        try:
            return cls.model_validate(dict(settings))
        except ValidationError as exc:
            raise ConfigError(_settings_problems(exc)) from None

    def with_overrides(self, overrides: Mapping[str, object] | None = None) -> TrainConfig:
        """These settings (a workflow section's extra fields dropped) with ``overrides`` applied.

        Raises
        ------
        ConfigError
            An unknown setting or an invalid value (see :meth:`checked`).
        """
        data = self.model_dump(include=set(TrainConfig.model_fields))
        return TrainConfig.checked({**data, **(overrides or {})})


def _settings_problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(
                f"unknown training setting '{loc}'; see terraseg.config.TrainConfig for the "
                "settings"
            )
        elif err["type"] == "value_error":
            parts.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            parts.append(f"invalid training setting {loc}: {err['msg']}")
    return "; ".join(parts)
