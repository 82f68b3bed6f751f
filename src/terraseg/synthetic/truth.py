"""The truth GeoPackage of a synthetic city, written in batches as windows are rendered.

Three layers: ``buildings`` (``building_id``), ``roads`` (``road_class``,
``width_m``) and ``road_centerlines`` (``width_m``), in the scene CRS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from numpy.typing import NDArray
from pyogrio.raw import write as ogr_write

from terraseg.synthetic.layout import TruthFeatures
from terraseg.synthetic.streets import ROAD_CLASSES

__all__ = ["TruthWriter"]

_TRUTH_BATCH = 20000


class TruthWriter:
    """Appends truth features to the three GeoPackage layers in batches."""

    def __init__(self, path: Path, crs: str, metres_per_unit: float) -> None:
        self.path = path
        self.crs = crs
        self.pending: list[TruthFeatures] = []
        self.n_pending = 0
        self.started: set[str] = set()
        self.n_buildings = 0
        self.road_length_m = 0.0
        self.metres_per_unit = metres_per_unit

    def add(self, truth: TruthFeatures) -> None:
        self.pending.append(truth)
        self.n_pending += len(truth.buildings) + len(truth.roads) + len(truth.centerlines)
        if self.n_pending >= _TRUTH_BATCH:
            self.flush()

    def _write(
        self,
        layer: str,
        geoms: NDArray[np.object_],
        fields: dict[str, NDArray[np.generic]],
        gtype: str,
    ) -> None:
        if not len(geoms) and layer in self.started:
            return
        ogr_write(
            str(self.path),
            np.asarray(shapely.to_wkb(geoms), dtype=object) if len(geoms) else np.empty(0, object),
            list(fields.values()),
            list(fields.keys()),
            layer=layer,
            driver="GPKG",
            geometry_type=gtype,
            crs=self.crs,
            append=layer in self.started,
            # GeoPackage 1.2: read without warnings by every GDAL >= 2.2 (Debian's 3.6 too)
            dataset_options=None if self.started else {"VERSION": "1.2"},
        )
        self.started.add(layer)

    def flush(self) -> None:
        t = TruthFeatures.concat(self.pending)
        self.pending, self.n_pending = [], 0
        order = np.argsort(t.building_id, kind="stable")
        self._write(
            "buildings",
            t.buildings[order],
            {"building_id": t.building_id[order].astype(np.int64)},
            "Polygon",
        )
        names = np.asarray(ROAD_CLASSES, dtype=object)
        self._write(
            "roads",
            _as_multi(t.roads),
            {"road_class": names[t.road_class.astype(np.int64)], "width_m": t.road_width_m},
            "MultiPolygon",
        )
        self._write(
            "road_centerlines",
            t.centerlines,
            {"width_m": t.width_m.astype(np.float32)},
            "LineString",
        )
        self.n_buildings += len(t.buildings)
        if len(t.centerlines):
            self.road_length_m += float(shapely.length(t.centerlines).sum()) * self.metres_per_unit


def _as_multi(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    out = np.empty(len(geoms), dtype=object)
    for k, g in enumerate(geoms):
        out[k] = g if isinstance(g, shapely.MultiPolygon) else shapely.MultiPolygon([g])
    return out
