"""Workflow files: versioned pydantic models with ``extra="forbid"``.

A workflow YAML describes a batch run: which scenes, which models, how to tile,
which stages, where outputs go and which Dask cluster runs it. The
orchestration layer unpacks these models into plain keyword arguments; config
objects never reach the core modules.

Relative paths in a workflow are resolved against the folder of the workflow
file, so a workflow and its data can move together. YAML is read with
``yaml.safe_load`` only: tags such as ``!!python/object`` are refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from terraseg.errors import ConfigError

__all__ = [
    "CURRENT_VERSION",
    "ClusterConfig",
    "InferenceConfig",
    "InputsConfig",
    "ModelsConfig",
    "OutputsConfig",
    "TilingConfig",
    "TrainConfig",
    "TrainStageConfig",
    "Workflow",
    "load_workflow",
    "upgrade_workflow",
]

CURRENT_VERSION = 1
Stage = Literal["predict", "vectorize", "export", "train"]
VectorFormat = Literal["gpkg", "fgb", "parquet"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputsConfig(_Model):
    """Which scenes to process."""

    paths: list[str] = Field(
        default_factory=list,
        description="Scene paths or glob patterns (relative to the workflow file), URLs "
        "read with range requests (https://..., s3://...), any path GDAL reads "
        "(/vsicurl/...), or STAC item / item collection JSON files (one scene per item).",
    )
    list_file: str | None = Field(
        default=None, description="A text file with one scene path per line ('#' comments)."
    )
    assume_crs: str | None = Field(
        default=None, description="CRS for scenes that have none, e.g. 'EPSG:32633'."
    )
    asset: str = Field(
        default="visual",
        description="STAC inputs: the key or role of the asset to read (e.g. visual, image).",
    )


class ModelsConfig(_Model):
    """Models by bundled name or checkpoint path."""

    semantic: str | None = Field(
        default="demo-semantic", description="Semantic model: bundled name or checkpoint path."
    )
    instance: str | None = Field(
        default=None, description="Instance model (buildings): bundled name or path, or null."
    )


class TilingConfig(_Model):
    """Global tile lattice and chunking."""

    tile_px: int = Field(default=512, gt=0, description="Model tile size, pixels.")
    overlap_px: int = Field(default=64, ge=0, description="Tile overlap, pixels.")
    chunk_px: int = Field(default=2048, gt=0, description="Chunk (Dask task) size, pixels.")
    ramp: Literal["cosine", "linear", "none"] = Field(
        default="cosine", description="Blending window; 'none' crops tiles to their cores."
    )
    pad: Literal["reflect", "nodata"] = Field(
        default="reflect", description="How tiles hanging past the scene edge are filled."
    )


class InferenceConfig(_Model):
    """Where and how the model runs."""

    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    batch_size: int = Field(default=8, ge=1, description="Tiles per forward pass.")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        default="auto", description="Mixed precision on CUDA (always off on the CPU)."
    )
    backend: Literal["torch", "onnxruntime"] = Field(
        default="torch",
        description="Model execution: torch, or onnxruntime (CPU only, exported once per "
        "worker, kept only if it matches torch; pip install 'terraseg[onnx]').",
    )
    tta: Literal["none", "d4"] = Field(
        default="none",
        description="Test-time augmentation: 'd4' averages the eight flips and rotations of "
        "each tile before blending (8x the model's work).",
    )
    resample: bool = Field(
        default=True,
        description="Read a scene whose GSD is outside the model card's tolerance at the "
        "model's GSD (outputs stay on the scene's grid); false refuses such a scene.",
    )


class OutputsConfig(_Model):
    """Where results go and in which formats."""

    dir: str = Field(default="out", description="Output folder (one sub-folder per scene).")
    formats: list[VectorFormat] = Field(
        default_factory=lambda: list[VectorFormat](["gpkg"]),
        description="Vector formats to export.",
    )
    crs: str | None = Field(
        default=None, description="Reproject vector outputs to this CRS (default: scene CRS)."
    )
    probabilities: bool = Field(
        default=True,
        description="Also write probabilities.tif; each building's score is its mean building "
        "probability (NaN without it).",
    )


class TLSConfig(_Model):
    """TLS for a remote Dask scheduler (see distributed.security.Security)."""

    ca_file: str = Field(description="CA certificate (PEM).")
    cert: str = Field(description="Client certificate (PEM).")
    key: str = Field(description="Client private key (PEM).")


class ClusterConfig(_Model):
    """Which Dask cluster runs the chunks."""

    type: Literal["local", "address", "synchronous"] = Field(
        default="local",
        description="'local': start a LocalCluster; 'address': connect to a running "
        "scheduler; 'synchronous': no cluster, run chunks in this process.",
    )
    address: str | None = Field(
        default=None, description="Scheduler address, e.g. tcp://10.0.0.5:8786 or tls://..."
    )
    n_workers: int = Field(default=2, ge=1, description="LocalCluster workers.")
    threads_per_worker: int = Field(default=1, ge=1, description="Threads per local worker.")
    memory_limit: str = Field(default="auto", description="Per-worker memory limit.")
    tls: TLSConfig | None = Field(default=None, description="TLS settings for 'address'.")

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.type == "address" and not self.address:
            raise ValueError("cluster.type 'address' needs cluster.address (tcp://host:8786)")
        if self.address and not self.address.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(
                f"cluster.address '{self.address}' must start with tcp://, tls:// or inproc://"
            )
        if self.address and self.address.startswith("tls://") and self.tls is None:
            raise ValueError("a tls:// scheduler address needs cluster.tls (ca_file, cert, key)")
        return self


AUGMENT_NAMES = ("d4", "brightness", "contrast", "hue", "scale", "blur", "noise")
"""Training augmentations (:data:`terraseg.models.augment.AUGMENTATIONS`, same order)."""
AUGMENT_PRESETS = ("none", "basic", "full")
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
        "'full' (also contrast, hue, scale ±25 %, blur, noise: for real imagery), 'none', or a "
        "list of names from d4, brightness, contrast, hue, scale, blur, noise.",
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


class TrainStageConfig(TrainConfig):
    """Stage 'train' of a workflow: the data to train on, then :class:`TrainConfig`'s settings."""

    image: str = Field(description="Training GeoTIFF, or 'synthetic' for generated scenes.")
    labels: str | None = Field(
        default=None, description="Vector labels (GeoPackage/GeoJSON); null for 'synthetic'."
    )
    out: str = Field(
        description="Model name: writes <outputs.dir>/<name>.safetensors + <name>.card.yaml."
    )
    seeds: list[int] = Field(default_factory=lambda: [11, 12], description="Synthetic seeds.")
    size_px: int = Field(default=1024, gt=0, description="Synthetic scene size, pixels.")
    max_steps: int | None = Field(
        default=200, gt=0, description="Optimiser steps (with epochs: whichever ends first)."
    )


class Workflow(_Model):
    """A batch run, as written in ``workflows/*.yaml``."""

    version: int = Field(default=CURRENT_VERSION, description="Schema version of this file.")
    name: str = Field(default="run", description="Name of the run (used in outputs).")
    inputs: InputsConfig = Field(default_factory=InputsConfig, description="Scenes.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Models.")
    tiling: TilingConfig = Field(default_factory=TilingConfig, description="Tiling.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Device.")
    stages: list[Stage] = Field(
        default_factory=lambda: ["predict", "vectorize", "export"],  # type: ignore[arg-type]
        description="Stages to run, in order.",
    )
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="Outputs.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Dask cluster.")
    train: TrainStageConfig | None = Field(default=None, description="Training settings.")
    base_dir: str = Field(
        default=".", description="Folder relative paths are resolved against (set on load)."
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v > CURRENT_VERSION:
            raise ValueError(
                f"workflow version {v} is newer than this terraseg understands "
                f"({CURRENT_VERSION}); upgrade terraseg"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> Workflow:
        if "train" in self.stages and self.train is None:
            raise ValueError("stage 'train' needs a 'train:' section")
        if any(s != "train" for s in self.stages) and not (
            self.inputs.paths or self.inputs.list_file
        ):
            raise ValueError("inputs.paths or inputs.list_file must name at least one scene")
        if self.tiling.overlap_px >= self.tiling.tile_px:
            raise ValueError(
                f"tiling.overlap_px ({self.tiling.overlap_px}) must be smaller than "
                f"tiling.tile_px ({self.tiling.tile_px})"
            )
        if self.tiling.chunk_px < self.tiling.tile_px:
            raise ValueError(
                f"tiling.chunk_px ({self.tiling.chunk_px}) must be at least "
                f"tiling.tile_px ({self.tiling.tile_px})"
            )
        return self

    # ------------------------------------------------------------------ helpers
    def resolve(self, path: str) -> str:
        """``path`` resolved against the workflow's folder (GDAL URLs are kept)."""
        if "://" in path or path.startswith("/vsi"):
            return path
        return str((Path(self.base_dir) / os.path.expanduser(path)).resolve())

    def scene_paths(self) -> list[str]:
        """Every scene the workflow names, globs expanded, in a stable order.

        Raises
        ------
        ConfigError
            A pattern or list file matches nothing, or the list file is unreadable.
        """
        found: list[str] = []
        for pattern in self.inputs.paths:
            full = self.resolve(pattern)
            if glob.has_magic(full):
                matches = sorted(glob.glob(full))
                if not matches:
                    raise ConfigError(
                        f"inputs.paths pattern '{pattern}' matches no file (looked in "
                        f"'{self.base_dir}'); fix the pattern",
                        pattern=pattern,
                    )
                found.extend(matches)
            else:
                found.append(full)
        if self.inputs.list_file:
            lf = Path(self.resolve(self.inputs.list_file))
            try:
                lines = lf.read_text().splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read inputs.list_file '{lf}': {exc.strerror}; fix the path",
                    path=lf,
                ) from exc
            for line in lines:
                line = line.split("#", 1)[0].strip()
                if line:
                    found.append(str((lf.parent / line).resolve()) if "://" not in line else line)
        seen: set[str] = set()
        unique = [p for p in found if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
        return unique

    def output_dir(self, override: str | os.PathLike[str] | None = None) -> Path:
        """The run's output folder (``--out`` wins over ``outputs.dir``)."""
        return Path(override).resolve() if override else Path(self.resolve(self.outputs.dir))

    def config_hash(self) -> str:
        """A short hash of the settings that change results (not cluster or output dir)."""
        payload = self.model_dump(include={"models", "tiling", "inputs"}, mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def upgrade_workflow(data: dict[str, Any]) -> dict[str, Any]:
    """Upgrade an older workflow mapping to :data:`CURRENT_VERSION` (raster-vision style).

    Version 0 (unversioned drafts) named the tiling section ``tiles`` and the
    output folder ``out_dir``; both are renamed here.
    """
    version = data.get("version", 0)
    if not isinstance(version, int):
        raise ConfigError(f"workflow 'version' must be an integer, got {version!r}")
    if version == 0:
        data = dict(data)
        if "tiles" in data:
            data["tiling"] = data.pop("tiles")
        if "out_dir" in data:
            data.setdefault("outputs", {})["dir"] = data.pop("out_dir")
        data["version"] = 1
    return data


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read, upgrade and validate a workflow YAML file.

    Raises
    ------
    ConfigError
        Missing file, YAML syntax error, a Python object tag, unknown keys or
        invalid values: one line naming the file, the key and the fix.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read workflow '{p}': {exc.strerror or exc}; check the path", path=p
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(
            f"workflow '{p}' uses a YAML tag that is not allowed ({exc.problem}); "
            "workflows are plain data: remove the tag",
            path=p,
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"workflow '{p}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}; fix it",
            path=p,
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"workflow '{p}' must be a mapping of settings, got {type(data).__name__}", path=p
        )
    data = upgrade_workflow(data)
    data.setdefault("base_dir", str(p.resolve().parent))
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against workflows/demo.yaml"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"workflow '{p}': {loc}: {msg}{more}", path=p, key=loc) from exc
