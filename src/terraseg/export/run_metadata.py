"""The run's metadata as the one-row ``runs`` table of a GeoPackage."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from terraseg._version import __version__
from terraseg.errors import ConfigError

__all__ = ["runs_table"]


def _scalar(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value, default=str, sort_keys=True)


def runs_table(run_info: Mapping[str, object], *, scene_name: str) -> pd.DataFrame:
    """One row describing the run, for the GeoPackage ``runs`` table.

    Columns ``scene``, ``exported_utc`` and ``terraseg_version`` come first,
    then one column per ``run_info`` key (which may override them). Scalars
    are kept; dates become ISO 8601 text; mappings and lists (model names and
    versions, timings) become JSON text.

    Examples
    --------
    >>> row = runs_table({"config_hash": "ab12", "models": {"seg": "1.0"}}, scene_name="c")
    >>> row.loc[0, "scene"], row.loc[0, "config_hash"], row.loc[0, "models"]
    ('c', 'ab12', '{"seg": "1.0"}')
    """
    row: dict[str, object] = {
        "scene": scene_name,
        "exported_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "terraseg_version": __version__,
    }
    for key, value in run_info.items():
        if not str(key) or str(key).lower() in ("fid", "geom"):
            raise ConfigError(f"run_info key {key!r} cannot be a column name; rename it")
        row[str(key)] = _scalar(value)
    frame = pd.DataFrame([row])
    for column in frame.columns[frame.isna().all()]:
        frame[column] = frame[column].astype("string")  # typed so GDAL gets a TEXT column
    return frame
