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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from terraseg.errors import ConfigError
from terraseg.train_config import AUGMENT_NAMES, AUGMENT_PRESETS, TrainConfig, _Model

__all__ = [
    "AUGMENT_NAMES",
    "AUGMENT_PRESETS",
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
        default="auto", description="Mixed precision: 'auto' on CUDA (off on the CPU); 'bf16' "
        "also on a CPU with native bfloat16 (AVX512-BF16 or AMX)."
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

    type: Literal["local", "local-cuda", "address", "synchronous"] = Field(
        default="local",
        description="'local': start a LocalCluster (its workers spread over the GPUs; with "
        "inference.device cuda, one worker per GPU); 'local-cuda': dask-cuda's "
        "LocalCUDACluster, one worker per visible GPU (pip install dask-cuda); 'address': "
        "connect to a running scheduler; 'synchronous': no cluster, run chunks in this process.",
    )
    address: str | None = Field(
        default=None, description="Scheduler address, e.g. tcp://10.0.0.5:8786 or tls://..."
    )
    n_workers: int = Field(default=2, ge=1, description="LocalCluster workers.")
    threads_per_worker: int = Field(default=1, ge=1, description="Threads per local worker.")
    memory_limit: str = Field(default="auto", description="Per-worker memory limit.")
    tls: TLSConfig | None = Field(default=None, description="TLS settings for 'address'.")
    scenes_in_flight: int = Field(
        default=2, ge=1,
        description="Scenes whose tasks are submitted at once: a scene's finishing work "
        "overlaps the next one's chunks; the client's memory grows with this, not with the "
        "number of scenes.",
    )
    dashboard: bool = Field(
        default=True,
        description="Serve the Dask dashboard of a local cluster on 127.0.0.1 and print its "
        "link when the run starts (needs bokeh: pip install bokeh).",
    )

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
