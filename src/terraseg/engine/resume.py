"""Resume only what the same configuration made: build a run's manifest, refuse a mismatch.

:func:`build_manifest` describes what makes a scene's chunks (see
:mod:`terraseg.io.manifest` for the sections). A resumable run writes it to
``.chunks/manifest.json`` before its first chunk and into ``run.json`` when it
finishes; :func:`check_resume` and :func:`check_finished` compare it with the
current configuration and raise :class:`~terraseg.errors.ResumeMismatchError`,
one line naming what changed, when a resume would mix outputs of two
configurations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from terraseg.core.grid import ChunkGrid
from terraseg.errors import ResumeMismatchError
from terraseg.io.manifest import (
    FILE_KEYS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    describe_changes,
    fingerprint_file,
    read_manifest,
)
from terraseg.io.scene import Scene
from terraseg.models.spec import ModelSpec

__all__ = ["build_manifest", "check_finished", "check_resume", "grid_token"]

_FIX = "restore the previous setting to resume, or rerun with --overwrite instead of --resume " \
       "to start again"


def grid_token(grid: ChunkGrid) -> str:
    """A 16-hex-digit hash of the chunk grid (raster shape, tile lattice, chunk size)."""
    return hashlib.sha256(repr(grid.__dask_tokenize__()).encode()).hexdigest()[:16]


def build_manifest(
    scene: Scene,
    spec: ModelSpec,
    grid: ChunkGrid,
    *,
    model: Mapping[str, Mapping[str, Any]] | None = None,
    ramp: str = "cosine",
    pad: str = "reflect",
    probabilities: bool = False,
    tta: str = "none",
    amp: str = "auto",
) -> dict[str, Any]:
    """What makes this scene's chunks, as a JSON-ready resume manifest.

    Parameters
    ----------
    scene, spec, grid
        The scene, the model's spec (the card) and the chunk grid of the run.
    model
        The model's identity per role, from
        :func:`~terraseg.models.identity.run_model_fingerprint`. Without it only
        the spec's name is recorded, so changed weights under the same card go
        unnoticed.
    ramp, pad
        The blending ramp and edge padding the chunks are computed with.
    probabilities
        Whether chunks store quantised probabilities.
    tta
        Test-time augmentation; recorded (under ``tiling``) only when not ``"none"``,
        so manifests of runs without it are unchanged.
    amp
        Mixed precision asked for; recorded (under ``tiling``) only when explicit
        (``"bf16"``, ``"fp16"``), so a CPU run in bfloat16 is not resumed in float32.
    """
    if model is None:
        model = {"spec": {"name": spec.name, "source": "spec", "path": None, "sha256": None}}
    return {
        "version": MANIFEST_VERSION,
        "model": {role: dict(entry) for role, entry in model.items()},
        "card": {
            "name": spec.name,
            "task": spec.task,
            "classes": [[c.id, c.name] for c in spec.classes],
            "activation": spec.activation,
            "input": spec.input.model_dump(mode="json"),
        },
        "tiling": {
            "tile_px": grid.lattice.tile_px,
            "overlap_px": grid.lattice.overlap_px,
            "chunk_px": grid.chunk_px,
            "ramp": ramp,
            "pad": pad,
            **({"tta": tta} if tta != "none" else {}),
            **({"amp": amp} if amp not in ("auto", "off") else {}),
        },
        "outputs": {"probabilities": probabilities},
        "grid": grid_token(grid),
        "scene": {
            "path": str(scene.path),
            "shape": list(scene.shape),
            "bands": scene.count,
            "dtypes": list(scene.dtypes),
            "nodata": scene.nodata,
            # size, time and head hash of a local file; None for a URL
            **(fingerprint_file(scene.path) or dict.fromkeys(FILE_KEYS)),
        },
    }


def check_resume(out: Path | str, store: Path | Any, new: Mapping[str, Any]) -> None:
    """Raise unless the chunks stored in ``store`` were made by ``new``'s configuration.

    Raises
    ------
    ResumeMismatchError
        One line naming each change, e.g. ``cannot resume 'run/city': the model
        changed (demo-semantic sha256 ab12cd34… → cd34ef56…); …``; or the store
        has no readable manifest (an older terraseg made it), so nothing says
        what computed its chunks.
    """
    try:  # a chunk store (local or s3://) reads its own manifest; a path is a local folder
        old = store.read_manifest() if hasattr(store, "read_manifest") else read_manifest(store)
    except (OSError, ValueError) as exc:
        raise ResumeMismatchError(
            f"cannot resume '{out}': its chunk manifest is unreadable ({exc}); rerun with "
            "--overwrite instead of --resume to start again",
            path=out, changes=["unreadable manifest"],
        ) from None
    if old is None:
        raise ResumeMismatchError(
            f"cannot resume '{out}': its chunk store has no {MANIFEST_NAME} (an older terraseg "
            "made it), so what computed its chunks is unknown; rerun with --overwrite instead "
            "of --resume to start again",
            path=out, changes=["no manifest"],
        )
    _refuse_changes(out, old, new)


def _refuse_changes(out: Path | str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    changes = describe_changes(old, new)
    if changes:
        raise ResumeMismatchError(
            f"cannot resume '{out}': {'; '.join(changes)}; {_FIX}", path=out, changes=changes
        )


def check_finished(out: Path | str, run_json: Path | Any, new: Mapping[str, Any]) -> None:
    """Raise unless the finished outputs in ``out`` were made by ``new``'s configuration.

    A resumed workflow skips a scene whose ``classes.tif`` exists; its
    ``run.json`` holds the manifest it was made with.

    Raises
    ------
    ResumeMismatchError
        The configuration changed, or ``run.json`` is missing, unreadable or
        holds no manifest.
    """
    try:  # a path, or ``(store, name)`` for outputs in an object store
        text = (run_json.read_text() if isinstance(run_json, Path)
                else run_json[0].get_bytes(run_json[1]).decode())
        old = json.loads(text).get("manifest")
        name = run_json.name if isinstance(run_json, Path) else run_json[1]
    except (OSError, ValueError, AttributeError, KeyError):
        old, name = None, "run.json"
    if not isinstance(old, Mapping):
        raise ResumeMismatchError(
            f"cannot resume '{out}': its outputs have no manifest in '{name}' (an older "
            "terraseg or another command made them), so what computed them is unknown; rerun "
            "with --overwrite instead of --resume to start again",
            path=out, changes=["no manifest"],
        )
    _refuse_changes(out, old, new)
