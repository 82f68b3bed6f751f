"""Model cards: what a weights file is, what it reads and produces, and how it was made.

A card is a YAML file beside the weights, ``<name>.card.yaml`` next to
``<name>.safetensors`` (or ``.pt``/``.pth``/``.ckpt``/TorchScript). It holds
everything in :class:`~terraseg.models.spec.ModelSpec` (bands, normalisation,
classes, activation, tile size) plus the network architecture, the ground
sample distance the model was trained at, how it was trained, and its
measured metrics. Cards are read with ``yaml.safe_load`` only.

Example card::

    version: 1
    name: demo-semantic
    task: semantic
    input: {bands: [1, 2, 3], normalization: scale, scale: 255.0}
    classes:
      - {id: 0, name: background, color: [0, 0, 0]}
      - {id: 1, name: building, color: [230, 57, 70]}
      - {id: 2, name: road, color: [255, 209, 102]}
    architecture:
      library: smp
      name: Unet
      kwargs: {encoder_name: tu-resnet18, encoder_depth: 3,
               decoder_channels: [64, 32, 16], in_channels: 3, classes: 3}
    gsd_m: 0.5
    gsd_tolerance: 0.25
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from terraseg.errors import BandError, ConfigError, ModelLoadError
from terraseg.io.atomic import atomic_output
from terraseg.models.spec import InputSpec, ModelSpec

__all__ = [
    "CARD_SUFFIX",
    "CARD_VERSION",
    "Architecture",
    "GSDWarning",
    "ModelCard",
    "TrainingInfo",
    "adapt_bands",
    "card_path_for",
    "check_gsd",
    "file_sha256",
    "load_card",
    "save_card",
    "upgrade_card",
]

CARD_VERSION = 1
CARD_SUFFIX = ".card.yaml"

# smp architectures a card may name (the classes exported by segmentation_models_pytorch)
SMP_ARCHITECTURES = (
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
    "PAN", "UPerNet", "Segformer", "DPT",
)


class GSDWarning(UserWarning):
    """The scene's ground sample distance is outside the model's tolerance."""


class Architecture(BaseModel):
    """How to build the network the weights belong to.

    ``library="smp"`` builds ``segmentation_models_pytorch.<name>(**kwargs)``
    (always with ``encoder_weights=None``: the weights file supplies every
    parameter, nothing is downloaded); ``library="torchgeo"`` builds a
    ``torchgeo.models.<name>`` (``FCN``); ``library="torchvision"`` builds the
    Mask R-CNN of :func:`terraseg.models.detector.build_maskrcnn` (task
    ``detection``); ``library="torchscript"`` means the
    weights file is a TorchScript archive that carries its own graph;
    ``library="builtin"`` is one of terraseg's built-in models.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    library: Literal["smp", "torchgeo", "torchvision", "torchscript", "builtin"] = Field(
        description="Where the network class comes from."
    )
    name: str | None = Field(
        default=None,
        description="Class name in the library (e.g. 'Unet'), or the built-in model name; "
        "unused for torchscript.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor keyword arguments, e.g. encoder_name, encoder_depth, "
        "decoder_channels, in_channels, classes.",
    )

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        if self.library == "smp":
            if self.name not in SMP_ARCHITECTURES:
                raise ValueError(
                    f"unknown smp architecture {self.name!r}; "
                    f"use one of {', '.join(SMP_ARCHITECTURES)}"
                )
            if "encoder_name" not in self.kwargs:
                raise ValueError("smp architecture kwargs need 'encoder_name' (e.g. 'tu-resnet18')")
        elif self.library == "torchgeo":
            if self.name != "FCN":
                raise ValueError(f"unknown torchgeo architecture {self.name!r}; use 'FCN'")
        elif self.library == "torchvision":
            if self.name != "MaskRCNN":
                raise ValueError(f"unknown torchvision architecture {self.name!r}; use 'MaskRCNN'")
        elif self.library == "builtin" and not self.name:
            raise ValueError("a builtin architecture needs a name (e.g. 'cheap')")
        return self

    @property
    def in_channels(self) -> int | None:
        """Input channels the architecture is built with (``None`` when not stated)."""
        value = self.kwargs.get("in_channels")
        return int(value) if value is not None else None

    @property
    def out_channels(self) -> int | None:
        """Output channels (classes) the architecture is built with (``None`` when not stated)."""
        value = self.kwargs.get("classes")
        return int(value) if value is not None else None


class TrainingInfo(BaseModel):
    """How the weights were made (for reproducing them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[str] = Field(
        default_factory=list,
        description="Training (and validation) data: files or how to make them.",
    )
    command: str | None = Field(default=None, description="The command that trained the model.")
    init_from: str | None = Field(
        default=None,
        description="The model whose weights training started from (name and weights sha256).",
    )
    seed: int | None = Field(default=None, description="Random seed of the run.")
    epochs: int | None = Field(default=None, description="Epochs run.")
    steps: int | None = Field(default=None, description="Optimiser steps run.")
    best_epoch: int | None = Field(
        default=None, description="Epoch whose weights were kept (the best 'monitor')."
    )
    best_step: int | None = Field(default=None, description="Optimiser step of best_epoch.")
    monitor: str | None = Field(
        default=None, description="Validation metric that chose best_epoch, e.g. val_miou."
    )
    batch_size: int | None = Field(default=None, description="Patches per step.")
    patch_px: int | None = Field(default=None, description="Training patch size, pixels.")
    lr: float | None = Field(default=None, description="Learning rate.")
    seconds: float | None = Field(default=None, description="Wall-clock training time, seconds.")
    hardware: str | None = Field(default=None, description="Where it was trained, e.g. 'cpu x2'.")
    precision: str | None = Field(
        default=None, description="Arithmetic of training (Lightning's precision: 32, bf16-mixed)."
    )
    software: dict[str, str] = Field(
        default_factory=dict, description="Versions of the packages used (torch, torchgeo, smp)."
    )
    notes: str | None = Field(default=None, description="Anything else worth knowing.")


class ModelCard(ModelSpec):
    """A model card: a :class:`ModelSpec` plus architecture, GSD, provenance and metrics.

    A card *is* a spec (it subclasses it), so it can be passed wherever a
    spec is expected; :meth:`to_spec` returns the plain spec.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=CARD_VERSION, description="Card schema version.")
    description: str = Field(default="", description="One line about the model.")
    architecture: Architecture = Field(description="How to build the network.")
    weights: str | None = Field(
        default=None,
        description="Weights file name, relative to the card's folder "
        "(default: the card's stem with .safetensors).",
    )
    weights_sha256: str | None = Field(
        default=None, description="SHA-256 of the weights file, checked on load when given."
    )
    gsd_m: float | None = Field(
        default=None, gt=0, description="Ground sample distance the model was trained at, m/px."
    )
    gsd_tolerance: float = Field(
        default=0.25, ge=0, description="Accepted relative GSD deviation, e.g. 0.25 = ±25 %."
    )
    training: TrainingInfo | None = Field(default=None, description="How the weights were made.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Measured quality, e.g. {'val_iou_building': 0.8}; see 'evaluation'.",
    )
    evaluation: str | None = Field(
        default=None, description="How and on what data the metrics were measured."
    )
    license: str | None = Field(default=None, description="Licence of the weights.")

    @model_validator(mode="after")
    def _check_card(self) -> ModelCard:
        if self.version > CARD_VERSION:
            raise ValueError(
                f"card version {self.version} is newer than this terraseg understands "
                f"({CARD_VERSION}); upgrade terraseg"
            )
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids must be unique, got {ids}")
        names = {c.name for c in self.classes}
        if self.task == "boundary" and not {"building", "building edge"} <= names:
            raise ValueError(
                f"a 'boundary' model needs classes named 'building' and 'building edge', got "
                f"{sorted(names)}; fix the card's classes or set task: semantic"
            )
        if self.task in ("semantic", "boundary") and ids != list(range(len(ids))):
            raise ValueError(
                f"class ids must be 0..{len(ids) - 1} in order (output channel k is class k), "
                f"got {ids}"
            )
        arch = self.architecture
        if (self.task == "detection") != (arch.library == "torchvision"):
            raise ValueError(
                f"task '{self.task}' with architecture library '{arch.library}': detection "
                "models are torchvision MaskRCNN and MaskRCNN is a detection model; fix task or "
                "architecture"
            )
        if self.task == "detection" and (
            "building" not in names or int(arch.kwargs.get("num_classes", 2)) != self.n_classes
        ):
            raise ValueError(
                f"a 'detection' model needs a class named 'building' and num_classes = "
                f"{self.n_classes} (its classes, background included), got {sorted(names)} and "
                f"num_classes={arch.kwargs.get('num_classes', 2)}"
            )
        if arch.in_channels is not None and arch.in_channels != self.input.n_bands:
            raise ValueError(
                f"architecture in_channels={arch.in_channels} but input.bands has "
                f"{self.input.n_bands} band(s) {list(self.input.bands)}; make them agree"
            )
        if arch.out_channels is not None and arch.out_channels != self.n_classes:
            raise ValueError(
                f"architecture classes={arch.out_channels} but the card lists {self.n_classes} "
                "classes; make them agree"
            )
        return self

    def to_spec(self) -> ModelSpec:
        """The plain :class:`ModelSpec` part of the card (what the engine needs)."""
        return ModelSpec(**{k: getattr(self, k) for k in ModelSpec.model_fields})

    @classmethod
    def from_spec(
        cls, spec: ModelSpec, *, architecture: Architecture, **fields: object
    ) -> ModelCard:
        """Make a card from a spec plus the card-only fields."""
        data = {k: getattr(spec, k) for k in ModelSpec.model_fields}
        data.update(fields)
        return cls(architecture=architecture, **data)

    def to_yaml(self) -> str:
        """The card as YAML text (plain types only, readable by ``yaml.safe_load``)."""
        data = self.model_dump(mode="json", exclude_none=True)
        first = ("version", "name", "description")
        data = {**{k: data[k] for k in first if k in data}, **data}
        return yaml.safe_dump(
            data, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True
        )

    def summary(self) -> str:
        """One line: name, task, classes, bands, GSD and architecture."""
        arch = self.architecture
        what = arch.library if arch.name is None else f"{arch.library}.{arch.name}"
        enc = arch.kwargs.get("encoder_name")
        if enc:
            what += f"({enc})"
        gsd = f"{self.gsd_m:g} m" if self.gsd_m else "any gsd"
        classes = "/".join(c.name for c in self.classes)
        score = f", min score {self.building_min_score:g}" if self.building_min_score else ""
        if self.building_seed_p is not None or self.building_landscape != "edge":
            from terraseg.instances.merge import BOUNDARY_SEED_P

            seed_p = BOUNDARY_SEED_P if self.building_seed_p is None else self.building_seed_p
            score += f", split {self.building_landscape} from seeds p >= {seed_p:g}"
        return (
            f"{self.task}, {classes}, bands {list(self.input.bands)}, {gsd}{score}, {what}"
            + (f" - {self.description}" if self.description else "")
        )


# --------------------------------------------------------------------------- YAML


def upgrade_card(data: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a card dictionary from an older schema version to :data:`CARD_VERSION`.

    Version 1 is the first schema, so this only fills in a missing version.

    Examples
    --------
    >>> upgrade_card({"name": "x"})["version"]
    1
    """
    out = dict(data)
    out.setdefault("version", CARD_VERSION)
    return out


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "card"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def card_from_dict(data: Mapping[str, Any], *, source: str = "card") -> ModelCard:
    """Validate a card dictionary; raise :class:`ModelLoadError` with one line on failure."""
    try:
        return ModelCard.model_validate(upgrade_card(dict(data)))
    except ValidationError as exc:
        raise ModelLoadError(
            f"model card {source} is invalid: {_one_line(exc)}; fix the card", path=source
        ) from None


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a ``.card.yaml`` file (``yaml.safe_load`` only).

    Raises
    ------
    ModelLoadError
        The file is missing, is not YAML, or does not validate; the message
        names the file, the field and the fix.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"model card '{p}' does not exist; check the path", path=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"cannot read model card '{p}': {exc}; check the file", path=p
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ModelLoadError(
            f"model card '{p}' is not valid YAML{where}; fix the syntax", path=p
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"model card '{p}' must be a YAML mapping (name:, architecture:, ...), "
            f"got {type(data).__name__}; fix the card",
            path=p,
        )
    return card_from_dict(data, source=f"'{p}'")


def save_card(card: ModelCard, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``card`` as YAML to ``path`` atomically (temporary name, then rename)."""
    final = Path(path)
    with atomic_output(final, overwrite=overwrite) as tmp:
        tmp.write_text(card.to_yaml(), encoding="utf-8")
    return final


def card_path_for(weights: str | os.PathLike[str]) -> Path:
    """The card path beside a weights file: ``x.safetensors`` → ``x.card.yaml``.

    Examples
    --------
    >>> card_path_for("/m/roads.v2.safetensors").name
    'roads.v2.card.yaml'
    """
    p = Path(weights)
    return p.with_name(p.stem + CARD_SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- checks


def adapt_bands(
    spec: ModelSpec, scene_count: int, *, bands: Sequence[int] | None = None, scene: str = "scene"
) -> InputSpec:
    """The input spec to use for a scene with ``scene_count`` bands.

    Parameters
    ----------
    spec
        The model's spec (or card).
    scene_count
        Number of bands in the scene.
    bands
        1-based scene bands to feed the model instead of ``spec.input.bands``,
        e.g. ``[1, 1, 1]`` to give a one-band (panchromatic) scene to an RGB
        model, or ``[3, 2, 1]`` for a BGR scene. Must have as many entries as
        the model has input channels.
    scene
        Name of the scene for messages.

    Returns
    -------
    InputSpec
        ``spec.input`` itself when it fits, or a copy with ``bands`` replaced.

    Raises
    ------
    BandError
        The model's (or the given) bands do not exist in the scene, or
        ``bands`` has the wrong length. Extra scene bands (a 4th NIR band for
        an RGB model) are fine: only the listed bands are read.

    Examples
    --------
    >>> from terraseg.models.spec import ModelSpec
    >>> adapt_bands(ModelSpec(name="m"), 1, bands=[1, 1, 1]).bands
    (1, 1, 1)
    >>> adapt_bands(ModelSpec(name="m"), 4).bands
    (1, 2, 3)
    """
    need = spec.input.n_bands
    if scene_count < 1:
        raise BandError(f"{scene} has no bands; check the file", count=scene_count)
    if bands is not None:
        chosen = tuple(int(b) for b in bands)
        if len(chosen) != need:
            raise BandError(
                f"model '{spec.name}' takes {need} input band(s) but bands={list(chosen)} lists "
                f"{len(chosen)}; give {need} 1-based scene bands, e.g. {[1] * need}",
                bands=chosen,
                count=scene_count,
            )
        bad = [b for b in chosen if not 1 <= b <= scene_count]
        if bad:
            raise BandError(
                f"bands {bad} do not exist in {scene}, which has {scene_count} band(s); "
                f"choose from 1..{scene_count}",
                bands=chosen,
                count=scene_count,
            )
        return spec.input.model_copy(update={"bands": chosen})
    if max(spec.input.bands) <= scene_count:
        return spec.input
    if scene_count == 1:
        fix = f"pass bands={[1] * need} to feed the single band to every input channel"
    elif scene_count < need:
        example = [min(i + 1, scene_count) for i in range(need)]
        fix = (
            f"pass {need} bands from 1..{scene_count} (e.g. bands={example}) or use a model "
            f"trained on {scene_count}-band imagery"
        )
    else:
        fix = f"pass {need} bands from 1..{scene_count}, e.g. bands={list(range(1, need + 1))}"
    raise BandError(
        f"model '{spec.name}' reads bands {list(spec.input.bands)} but {scene} has "
        f"{scene_count} band(s); {fix}",
        bands=spec.input.bands,
        count=scene_count,
    )


def check_gsd(
    card: ModelSpec,
    scene_gsd_m: float,
    policy: Literal["refuse", "warn"] = "refuse",
    *,
    scene: str = "scene",
) -> bool:
    """Check a scene's ground sample distance against the model's.

    Parameters
    ----------
    card
        The model card (a plain spec, or a card without ``gsd_m``, is never refused).
    scene_gsd_m
        The scene's GSD in metres per pixel (``Scene.gsd_m``).
    policy
        ``"refuse"`` raises :class:`ConfigError` when the GSD is outside the
        tolerance; ``"warn"`` emits a :class:`GSDWarning` and goes on.
    scene
        Name of the scene for messages.

    Returns
    -------
    bool
        ``True`` when the GSD is within tolerance (or the card states none).

    Notes
    -----
    This check does not resample. ``terraseg predict`` (and ``terraseg run``,
    :func:`terraseg.predict`) resamples a scene outside the tolerance on the fly
    to the model's GSD (:mod:`terraseg.engine.adapt`), unless told not to.

    Examples
    --------
    >>> card = ModelCard(name="m", architecture={"library": "builtin", "name": "cheap"},
    ...                  gsd_m=0.5, gsd_tolerance=0.25)
    >>> check_gsd(card, 0.55)
    True
    """
    gsd = getattr(card, "gsd_m", None)
    if gsd is None:
        return True
    if not (math.isfinite(scene_gsd_m) and scene_gsd_m > 0):
        raise ConfigError(f"{scene} has no usable GSD ({scene_gsd_m}); check its transform")
    tol = float(getattr(card, "gsd_tolerance", 0.25))
    deviation = abs(scene_gsd_m / gsd - 1.0)
    if deviation <= tol + 1e-9:
        return True
    msg = (
        f"{scene} has a GSD of {scene_gsd_m:.3g} m but model '{card.name}' was trained at "
        f"{gsd:g} m (±{tol:.0%}); resample the scene to {gsd:g} m first "
        f"(e.g. gdalwarp -tr {gsd:g} {gsd:g} -r bilinear), this check does not resample on the "
        "fly (terraseg predict does unless --no-resample), or accept the mismatch with "
        "gsd_policy='warn'"
    )
    if policy == "refuse":
        raise ConfigError(msg, gsd_m=scene_gsd_m, model_gsd_m=gsd)
    warnings.warn(msg, GSDWarning, stacklevel=2)
    return False
