"""What a model *is*, for a run's resume manifest: its name and the sha256 of its weights.

A model named as a file or a bundled name is identified by the sha256 of its
weights file (the file :func:`~terraseg.models.loading.load_model` reads, the
same hash a card's ``weights_sha256`` holds); a built-in model, which has no
file, by the sha256 of its name and parameters. Hashes are cached per file
``(path, size, mtime)``, so a workflow of many scenes reads each file once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from terraseg.errors import ModelLoadError
from terraseg.models.builtin import BUILTIN_MODELS, build_builtin
from terraseg.models.card import CARD_SUFFIX, file_sha256, load_card

# the same resolution as load_model, which keeps these helpers private to the package
from terraseg.models.loading import _bundled_paths, _find_weights_for_card, bundled_names

__all__ = ["model_fingerprint", "run_model_fingerprint"]

_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASHES_LOCK:
        if key not in _HASHES:
            _HASHES[key] = file_sha256(path)
        return _HASHES[key]


def _builtin_sha256(name: str) -> str:
    """sha256 of a built-in model's name and parameters (name, dtype, shape, bytes each)."""
    net, _ = build_builtin(name)
    h = hashlib.sha256(name.encode())
    for key, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"name", "source", "path", "sha256"}`` of a model as :func:`load_model` resolves it.

    ``source`` is ``"builtin"``, ``"bundled"`` or ``"file"``; ``path`` is the
    weights file (``None`` for a built-in model); ``sha256`` that file's hash,
    or for a built-in model the hash of its name and parameters.

    Raises
    ------
    ModelLoadError
        The name is not a known model and no such file exists.
    """
    text = os.fspath(name_or_path)
    is_name = isinstance(name_or_path, str) and "/" not in text and os.sep not in text
    if is_name and text in BUILTIN_MODELS:
        return {"name": text, "source": "builtin", "path": None, "sha256": _builtin_sha256(text)}
    if is_name and text in bundled_names() and not Path(text).exists():
        with _bundled_paths(text) as (_, weights):
            return {"name": text, "source": "bundled", "path": str(weights),
                    "sha256": _cached_sha256(weights)}
    path = Path(text)
    if path.name.endswith(CARD_SUFFIX) and path.is_file():
        path = _find_weights_for_card(path, load_card(path))
    if not path.is_file():
        raise ModelLoadError(
            f"model '{text}' is not a known model nor an existing file; check the name or path "
            "(terraseg models lists the models)",
            name=text,
        )
    return {"name": path.name, "source": "file", "path": str(path.resolve()),
            "sha256": _cached_sha256(path)}


def run_model_fingerprint(
    semantic: str | os.PathLike[str] | None, instance: str | os.PathLike[str] | None
) -> dict[str, dict[str, Any]]:
    """The ``model`` section of a resume manifest: a fingerprint per role that is set."""
    roles = {"semantic": semantic, "instance": instance}
    return {role: model_fingerprint(ref) for role, ref in roles.items() if ref}
