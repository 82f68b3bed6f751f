"""Where the project's real test images are, and a skip when they are not there.

The images live outside the repository (``../shared/data/real``, or the folder
named by ``TERRASEG_REAL_DATA``); a user's clone has none, so every test that
needs them skips with this reason instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["REAL", "real_file", "real_root"]


def real_root() -> Path:
    """``TERRASEG_REAL_DATA``, else ``shared/data/real`` beside the checkout."""
    env = os.environ.get("TERRASEG_REAL_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/real"


REAL = real_root()


def real_file(rel: str) -> Path:
    """``REAL / rel``, or skip the test when it is absent."""
    path = REAL / rel
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set TERRASEG_REAL_DATA)")
    return path
