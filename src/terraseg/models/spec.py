"""What a model expects and produces: input bands and normalisation, classes and colours.

These pydantic models are the code side of a model card; the orchestration
layer unpacks them into plain keyword arguments for the engine.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BUILDING_MIN_AREA_M2",
    "BOUNDARY_CLASSES",
    "DEFAULT_CLASSES",
    "IGNORE_LABEL",
    "ClassInfo",
    "InputSpec",
    "ModelSpec",
    "Task",
]


IGNORE_LABEL = 255
"""Label value that no loss or metric counts: unlabelled pixels (a superpixel left
without a class, the area outside a partly labelled image's label extent)."""


class ClassInfo(BaseModel):
    """One output class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, le=254, description="Class value in the label raster (255 is nodata).")
    name: str = Field(min_length=1, description="Class name, e.g. 'building'.")
    color: tuple[int, int, int] = Field(description="RGB colour, 0-255 each, for maps and QGIS.")


DEFAULT_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(id=0, name="background", color=(0, 0, 0)),
    ClassInfo(id=1, name="building", color=(230, 57, 70)),
    ClassInfo(id=2, name="road", color=(255, 209, 102)),
)

BOUNDARY_CLASSES: tuple[ClassInfo, ...] = (
    *DEFAULT_CLASSES,
    ClassInfo(id=3, name="building edge", color=(140, 20, 30)),
)
"""Classes of a ``boundary`` model: the semantic three and the edge ring of each building."""

Task = Literal["semantic", "boundary", "detection"]
"""What a model predicts, and so how the engine turns its output into buildings:
``semantic`` class scores (buildings are connected components); ``boundary`` class
scores with a ``building edge`` class (buildings by seeded watershed, touching
houses apart); ``detection`` per-tile boxes, masks and scores (Mask R-CNN)."""


class InputSpec(BaseModel):
    """Which scene bands a model reads, in which order, and how they are scaled.

    Statistics for ``meanstd``/``percentile``/``minmax`` normalisation are either
    given here (training statistics) or computed once per scene from a decimated
    read, never per tile.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bands: tuple[int, ...] = Field(
        default=(1, 2, 3),
        description="1-based scene bands in model order; repeat a band to feed a "
        "panchromatic scene to an RGB model, e.g. [1, 1, 1].",
    )
    normalization: Literal["scale", "meanstd", "minmax", "percentile"] = Field(
        default="scale", description="How raw values become model inputs."
    )
    scale: float = Field(default=255.0, gt=0, description="Divisor for 'scale' normalisation.")
    mean: tuple[float, ...] | None = Field(
        default=None, description="Per-band mean for 'meanstd' (after 'scale' is NOT applied)."
    )
    std: tuple[float, ...] | None = Field(default=None, description="Per-band std for 'meanstd'.")

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if not self.bands or min(self.bands) < 1:
            raise ValueError(f"bands must be 1-based band numbers, got {list(self.bands)}")
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if vals is not None and len(vals) != len(self.bands):
                raise ValueError(f"{name} has {len(vals)} values but bands has {len(self.bands)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        return self

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sub, div)`` float32 per band: the model input is ``(raw - sub) / div``.

        Lets the engine ship raw tiles (uint8: a quarter of the bytes) and
        normalise a whole batch on the device, with the same float32 operations
        as :meth:`apply`.
        """
        n = self.n_bands
        if self.normalization == "scale":
            return np.zeros(n, np.float32), np.full(n, self.scale, np.float32)
        if self.normalization == "meanstd" and self.mean is not None and self.std is not None:
            return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        raise ValueError(
            f"normalization '{self.normalization}' needs scene statistics; "
            "use terraseg.io.scene.compute_band_stats and pass them as mean/std"
        )

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Normalise ``array`` ``(band, y, x)`` (already band-selected) to float32 in place-ish."""
        sub, div = self.affine()
        out = array.astype(np.float32, copy=True)
        if sub.any():
            out -= sub[:, None, None]
        out /= div[:, None, None]
        return out


BUILDING_MIN_AREA_M2 = 4.0
"""The default ``building_min_area_m2``: buildings smaller than this (true m²) are dropped."""


class ModelSpec(BaseModel):
    """The parts of a model card the engine needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Model name.")
    task: Task = Field(
        default="semantic",
        description="'semantic', 'boundary' (has a 'building edge' class) or 'detection'.",
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Input bands and scaling.")
    classes: tuple[ClassInfo, ...] = Field(default=DEFAULT_CLASSES, description="Output classes.")
    activation: Literal["softmax", "sigmoid", "identity"] = Field(
        default="softmax", description="How logits become blendable scores."
    )
    tile_px: int = Field(default=512, gt=0, description="Recommended tile size, pixels.")
    overlap_px: int = Field(default=64, ge=0, description="Recommended tile overlap, pixels.")
    building_min_score: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Buildings whose score (mean building probability) is below this are "
        "left out of the vector layers (chosen on validation data; 0: keep all). Needs "
        "the probability raster; instances.tif keeps them.",
    )
    building_min_area_m2: float = Field(
        default=BUILDING_MIN_AREA_M2, ge=0.0,
        description="Buildings smaller than this (true m²) are left out of the vector layers "
        "(chosen on validation data with building_min_score; default 4).",
    )
    building_seed_p: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Boundary models with probabilities: the building-interior probability "
        "that seeds an instance (higher: fewer seeds, so touching houses the model only half "
        "separates stay one; lower: more splits). None: the engine's default, 0.6.",
    )
    building_landscape: Literal["edge", "distance"] = Field(
        default="edge",
        description="Boundary models: what the seeds flood through to share the building "
        "mask between them, the 'building edge' probability or the distance to the nearest "
        "seed (chosen on validation data with the filters).",
    )

    def building_settings(self) -> dict[str, Any]:
        """How buildings are finished from this model's output, as
        :class:`~terraseg.engine.finish.FinishOptions` takes them: ``min_score``,
        ``min_area_m2``, ``seed_p`` (None: the engine's default) and ``landscape``."""
        return {"min_score": self.building_min_score, "min_area_m2": self.building_min_area_m2,
                "seed_p": self.building_seed_p, "landscape": self.building_landscape}

    def building_attrs(self) -> dict[str, Any]:
        """:meth:`building_settings` as ``building_*`` attributes of a DataArray (netCDF
        attributes cannot be None: an unset ``seed_p`` is left out)."""
        return {f"building_{k}": v for k, v in self.building_settings().items()
                if v is not None}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_id(self, name: str) -> int | None:
        """The id of the class called ``name``, or None."""
        return next((c.id for c in self.classes if c.name == name), None)

    def class_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.classes}

    def colormap(self) -> dict[int, tuple[int, int, int]]:
        return {c.id: c.color for c in self.classes}
