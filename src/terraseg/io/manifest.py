"""The resume manifest: what made a run's stored chunks, so a resume can refuse a different one.

A resumable run writes ``.chunks/manifest.json`` before its first chunk is
stored. It records, in sections:

``model``
    per role (``semantic``, ``instance``) the model's name and the sha256 of its
    weights file (of its parameters for a built-in model);
``card``
    the card's name, task, classes, activation and input bands/scaling;
``tiling``
    tile, overlap and chunk size, blending ramp and edge padding;
``outputs``
    whether probabilities are stored;
``grid``
    a token of the chunk grid;
``scene``
    the raster's shape, bands, dtypes and nodata, and for a local file its size,
    modification time and the sha256 of its first 64 KiB (header and first blocks).

:func:`describe_changes` compares two manifests and says, in words, which
sections differ; :func:`manifest_token` is a short hash of the compared content,
used in Dask task keys. Display-only fields (the scene's path, a model's name
or path) are not compared: a moved scene or a renamed copy of the same weights
still resumes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FILE_KEYS",
    "HEAD_BYTES",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "describe_changes",
    "fingerprint_file",
    "manifest_token",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: How much of a scene file is hashed: its header and first blocks.
HEAD_BYTES = 64 * 1024
#: The keys :func:`fingerprint_file` returns.
FILE_KEYS = ("size_bytes", "mtime_ns", "head_sha256")

#: Fields shown in messages but not compared: ``(section, key)``, or ``(section, "*", key)``
#: for a key inside every entry of a section (every model role).
_DISPLAY_ONLY = {("scene", "path"), ("model", "*", "name"), ("model", "*", "path"),
                 ("model", "*", "source")}
_SECTION_WORDS = {
    "version": "the manifest format",
    "model": "the model",
    "card": "the model card",
    "tiling": "the tiling",
    "outputs": "the stored outputs",
    "grid": "the chunk grid",
    "scene": "the scene",
}


def fingerprint_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"size_bytes", "mtime_ns", "head_sha256"}`` of a local file; ``None`` if it is not one.

    ``head_sha256`` hashes the first :data:`HEAD_BYTES` bytes (a GeoTIFF's header
    and first blocks), so even a rewrite that keeps size and time is noticed
    when it changes the header. URLs and GDAL virtual paths give ``None``.
    """
    p = Path(os.fspath(path))
    try:
        st = p.stat()
        if not p.is_file():
            return None
        with open(p, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, ValueError):
        return None
    return {
        "size_bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head_sha256": hashlib.sha256(head).hexdigest(),
    }


def _compared(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` without its token and display-only fields."""
    out: dict[str, Any] = {}
    for section, value in manifest.items():
        if section == "token":
            continue
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if (section, k) not in _DISPLAY_ONLY}
            value = {
                k: ({kk: vv for kk, vv in v.items() if (section, "*", kk) not in _DISPLAY_ONLY}
                    if isinstance(v, Mapping) else v)
                for k, v in value.items()
            }
        out[section] = value
    return out


def manifest_token(manifest: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of what ``manifest`` compares (not its display-only fields).

    Examples
    --------
    >>> a = {"tiling": {"tile_px": 512}, "scene": {"path": "a.tif", "shape": [9, 9]}}
    >>> b = {"tiling": {"tile_px": 512}, "scene": {"path": "moved/a.tif", "shape": [9, 9]}}
    >>> manifest_token(a) == manifest_token(b), len(manifest_token(a))
    (True, 16)
    """
    text = json.dumps(_compared(manifest), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(root: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``root/manifest.json`` atomically (with its token); returns its path."""
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    payload = {**manifest, "token": manifest_token(manifest)}
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest in ``root``; ``None`` when there is none.

    Raises
    ------
    ValueError
        The file exists but is not a JSON object.
    """
    path = Path(root) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' holds {type(data).__name__}, not a JSON object")
    return data


def _short(value: Any) -> str:
    """A value as a message shows it: hashes cut to 8 digits, times as UTC, long text cut."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:8] + "…"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 48 else text[:47] + "…"


def _model_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"demo-semantic sha256 ab12cd34… → cd34ef56…"`` for each role whose weights differ."""
    parts = []
    for role in sorted(set(old) | set(new)):
        a, b = old.get(role), new.get(role)
        if a is None or b is None:
            present = "added" if a is None else "removed"
            entry = b if a is None else a
            parts.append(f"{role} model {_name(entry)} {present}")
        elif a.get("sha256") != b.get("sha256"):
            rename = _name(b) + " " if _name(a) != _name(b) else ""
            parts.append(f"{_name(a)} sha256 {_short(a.get('sha256'))} → "
                         f"{rename}sha256 {_short(b.get('sha256'))}")
    return ", ".join(parts)


def _name(entry: Any) -> str:
    return str(entry.get("name", "?")) if isinstance(entry, Mapping) else "?"


def _keys_change(section: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"tile_px 256 → 128, ramp cosine → linear"`` for the compared keys that differ."""
    parts = []
    for key in [*new, *(k for k in old if k not in new)]:  # in the order the run builds it
        if (section, key) in _DISPLAY_ONLY or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if key == "mtime_ns":
            a, b = (_utc(v) for v in (a, b))
        parts.append(f"{key} {_short(a)} → {_short(b)}")
    if section == "scene" and parts:
        where = new.get("path") or old.get("path")
        return f"{Path(str(where)).name}: " + ", ".join(parts) if where else ", ".join(parts)
    return ", ".join(parts)


def _utc(ns: Any) -> Any:
    if not isinstance(ns, int):
        return ns
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two manifests, one phrase per section, in section order.

    Display-only fields (the scene's path, a model's name or file) do not count.

    Examples
    --------
    >>> old = {"tiling": {"tile_px": 256, "ramp": "cosine"}, "scene": {"path": "a.tif"}}
    >>> new = {"tiling": {"tile_px": 128, "ramp": "cosine"}, "scene": {"path": "b/a.tif"}}
    >>> describe_changes(old, new)
    ['the tiling changed (tile_px 256 → 128)']
    """
    a, b = _compared(old), _compared(new)
    differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if differ & {"tiling", "scene"}:
        differ.discard("grid")  # the grid follows from the tiling and the scene's shape
    out = []
    for section in [*_SECTION_WORDS, *sorted((set(a) | set(b)) - set(_SECTION_WORDS))]:
        if section not in differ:
            continue
        words = _SECTION_WORDS.get(section, f"'{section}'")
        va, vb = old.get(section), new.get(section)
        if section == "model" and isinstance(va, Mapping) and isinstance(vb, Mapping):
            detail = _model_change(va, vb)
        elif isinstance(va, Mapping) and isinstance(vb, Mapping):
            detail = _keys_change(section, va, vb)
        else:
            detail = f"{_short(va)} → {_short(vb)}"
        out.append(f"{words} changed ({detail})" if detail else f"{words} changed")
    return out
