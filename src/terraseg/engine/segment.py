"""Model-free segmentation of a scene, chunk by chunk (``terraseg segment``).

Methods:

- ``threshold``: a boolean band expression (``"b1 > 120"``), or Otsu's
  threshold of one band fitted on a decimated sample of the scene;
- ``index``: NDVI / NDWI (4-band) or ExG (RGB) above a threshold (given, or
  Otsu on a sample of the index);
- ``kmeans``: k colour centres fitted on a sample (bands scaled by the
  sample's 2nd..98th percentiles), every pixel assigned to the nearest;
- ``slic``: superpixels (scikit-image) with global ids, a segment crossing a
  chunk border being one segment;
- ``watershed``: compact watershed of the colour gradient (Sobel) from markers
  on the same seed lattice, with global ids like ``slic``;
- ``felzenszwalb``: graph-based segmentation (scikit-image), global ids alike;
- ``canny``: Canny edges of the grey level (mean of the normalized bands 1-3),
  written as ``edges.tif`` (uint8, 1 = edge) and as lines (layer ``edges``).

The first three write ``classes.tif`` (uint8 COG, 255 = nodata); the region
methods (``slic``, ``watershed``, ``felzenszwalb``) write ``segments.tif`` (uint32
COG, global ids, 0 = nodata). Each writes
``segments.gpkg`` (layer ``segments``, or ``edges``; QGIS default styles and a
``runs`` table), ``segments.qgz`` (a QGIS project showing the layer and the raster
over the source scene) and ``segment.json`` (the resolved parameters: the fitted
threshold or centres, the seed step). ``labelling=True`` (region methods) writes
``labelling.gpkg``/``.qgz`` instead, with an empty ``class`` and a QGIS form.

Global statistics come from one decimated read (:meth:`Scene.read_decimated`,
served from overviews when the file has them); each chunk is then read on its
own, so memory holds one chunk (plus, for the region methods, the merger's
per-segment table and border strips), never the scene; the polygons are written
to the GeoPackage in pools of batches (:mod:`terraseg.engine.segment_output`).

Region methods with global ids: each chunk is segmented over its core plus a
halo, in a window aligned on the scene-wide seed lattice
(:func:`~terraseg.engine.segment_methods.slic_window`,
:func:`~terraseg.engine.segment_methods.lattice_markers`), so two neighbouring
chunks place the same seeds and agree on the segments near their shared face
(halo: :data:`SLIC_HALO_STEPS` seed steps; Felzenszwalb, which has no seeds and
merges whole components, :data:`FELZENSZWALB_HALO_PX`). The chunk labels are
then reconciled by :class:`~terraseg.instances.InstanceMerger`, the face merge
of building instances, and renumbered ``1..N`` in a second streaming pass.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import NODATA
from terraseg.engine.segment_edges import check_canny, run_canny
from terraseg.engine.segment_methods import (
    apply_kmeans,
    check_index,
    compute_index,
    evaluate_expression,
    felzenszwalb_window,
    fit_kmeans,
    fit_otsu,
    mean_by_label,
    normalize_bands,
    parse_expression,
    slic_step_px,
    slic_window,
    watershed_window,
)
from terraseg.engine.segment_output import as_multi, for_labelling, stream_segments
from terraseg.errors import ConfigError, OutputExistsError
from terraseg.export.labelling import label_classes
from terraseg.instances import InstanceMerger
from terraseg.io.raster_sink import RasterSink, bounded_gdal_cache
from terraseg.io.scene import Scene, open_scene

__all__ = ["METHODS", "SegmentMethod", "SegmentResult", "segment_scene"]

SegmentMethod = Literal[
    "threshold", "index", "kmeans", "slic", "watershed", "felzenszwalb", "canny"
]
REGION_METHODS: tuple[str, ...] = ("slic", "watershed", "felzenszwalb")
METHODS: tuple[str, ...] = get_args(SegmentMethod)

#: Halo of a SLIC chunk, in seed steps. Measured on a 512² synthetic scene (seed 3,
#: 0.5 m, 50 m² segments, step 14 px), chunk 256 against chunk 512: halos of 3 / 5 / 8
#: steps leave 0.76 % / 0.42 % / 0.001 % of the pixels in differing segments (all within
#: 60 px of the chunk border) and 1059 / 1064 / 1070 segments against 1066 / 1068 / 1070.
SLIC_HALO_STEPS = 8
#: Default compactness of ``watershed``. Measured on a 1024² synthetic scene (seed 21,
#: 0.5 m, 14 px marker step, one window): compactness 0 / 0.001 / 0.003 / 0.01 / 0.03 give
#: building boundary recall (2 px) 0.912 / 0.928 / 0.929 / 0.875 / 0.789 and
#: undersegmentation error 0.053 / 0.054 / 0.055 / 0.064 / 0.075 (SLIC: 0.909 / 0.056).
WATERSHED_COMPACTNESS = 0.002
#: Halo of a Felzenszwalb chunk, pixels: its merges depend on whole components, so it
#: needs more context than the seeded methods. Measured on the 512² scene above (scale
#: 100, min size 50 px), chunk 256 against 512: halos of 112 / 196 px give 856 / 882
#: against 868 / 886 segments (1.4 % / 0.45 %) and 99.2 % / 99.6 % of the pixels in
#: matching segments.
FELZENSZWALB_HALO_PX = 192
#: Pixels of the decimated sample that fits Otsu thresholds, k-means centres
#: and band ranges.
SAMPLE_PX = 1_000_000
#: Samples k-means is fitted on (drawn from the decimated sample).
KMEANS_FIT_PX = 100_000

ClassRule = Callable[[NDArray[Any]], NDArray[np.uint8]]


@dataclass(slots=True)
class SegmentResult:
    """What :func:`segment_scene` wrote.

    Attributes
    ----------
    method
        The method.
    raster
        ``classes.tif`` or ``segments.tif``.
    vectors
        ``segments.gpkg``.
    layer
        Its layer: ``segments`` (polygons) or ``edges`` (lines).
    n_segments
        Rows written to the layer.
    params
        Resolved parameters (fitted threshold, centres, seed step...), as in
        ``segment.json``.
    """

    method: str
    raster: Path
    vectors: Path
    layer: str
    n_segments: int
    params: dict[str, Any] = field(default_factory=dict)

    def read_segments(self) -> gpd.GeoDataFrame:
        """The layer, read whole from :attr:`vectors` (for small scenes and notebooks)."""
        return gpd.read_file(self.vectors, layer=self.layer)


def _sample(scene: Scene, bands: list[int]) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """A decimated read of ``bands`` over the whole scene (at most :data:`SAMPLE_PX` pixels)."""
    rows, cols = scene.shape
    factor = max(1, math.ceil(math.sqrt(rows * cols / SAMPLE_PX)))
    shape = (math.ceil(rows / factor), math.ceil(cols / factor))
    data, valid = scene.read_decimated(bands, shape, purpose="segmentation statistics")
    if not valid.any():
        raise ConfigError(f"scene '{scene.path}' has no valid pixel to fit the segmentation on")
    return data, valid


def _band_range(scene: Scene, bands: list[int]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-band 2nd and 98th percentiles of the scene sample."""
    data, valid = _sample(scene, bands)
    vals = data[:, valid].astype(np.float64)
    low, high = np.percentile(vals, [2.0, 98.0], axis=1)
    return low.astype(np.float32), high.astype(np.float32)


def _threshold_rule(
    scene: Scene, expression: str | None, band: int, threshold: float | None,
    params: dict[str, Any],
) -> tuple[ClassRule, dict[int, str]]:
    if expression is not None:
        parse_expression(expression, scene.count)  # fail before any output
        params["expression"] = expression
        params["colors"] = {0: [0, 0, 0, 0], 1: [255, 190, 0, 255]}
        return (lambda d: evaluate_expression(expression, d).astype(np.uint8),
                {0: "background", 1: "foreground"})
    scene.check_bands([band])
    if threshold is None:
        data, valid = _sample(scene, [band])
        threshold = fit_otsu(data[0][valid])
        params["otsu"] = True
    t = float(threshold)
    params.update(band=band, threshold=t, colors={0: [0, 0, 0, 0], 1: [255, 190, 0, 255]})
    return lambda d: (d[band - 1] > t).astype(np.uint8), {0: "background", 1: "foreground"}


def _index_rule(
    scene: Scene, index: str | None, threshold: float | None, params: dict[str, Any]
) -> tuple[ClassRule, dict[int, str]]:
    if index is None:
        raise ConfigError("--method index needs --index ndvi, ndwi or exg")
    check_index(index, scene.count)
    if threshold is None:
        data, valid = _sample(scene, list(range(1, scene.count + 1)))
        threshold = fit_otsu(compute_index(data, index)[valid])
        params["otsu"] = True
    t = float(threshold)
    params.update(index=index, threshold=t)
    name = "water" if index == "ndwi" else "vegetation"
    params["colors"] = {0: [0, 0, 0, 0], 1: [30, 110, 220, 255] if index == "ndwi"
                        else [40, 160, 40, 255]}
    return lambda d: (compute_index(d, index) > t).astype(np.uint8), {0: "other", 1: name}


def _kmeans_rule(
    scene: Scene, k: int, seed: int, params: dict[str, Any]
) -> tuple[ClassRule, dict[int, str]]:
    bands = list(range(1, scene.count + 1))
    data, valid = _sample(scene, bands)
    low, high = (np.percentile(data[:, valid].astype(np.float64), q, axis=1).astype(np.float32)
                 for q in (2.0, 98.0))
    feats = normalize_bands(data, low, high)[:, valid].T
    rng = np.random.default_rng(seed)
    if len(feats) > KMEANS_FIT_PX:
        feats = feats[rng.choice(len(feats), KMEANS_FIT_PX, replace=False)]
    centres = fit_kmeans(feats, k, seed=seed)
    rgb = centres[:, :3] if centres.shape[1] >= 3 else centres.mean(1, keepdims=True)[:, [0, 0, 0]]
    colors = {i: [*np.clip(np.round(c * 255), 0, 255).astype(int).tolist(), 255]
              for i, c in enumerate(rgb)}
    params.update(k=k, seed=seed, band_low=low.tolist(), band_high=high.tolist(),
                  centres=centres.tolist(), colors=colors)
    return (lambda d: apply_kmeans(normalize_bands(d, low, high), centres),
            {i: f"cluster {i + 1}" for i in range(k)})


def _grid(scene: Scene, chunk_px: int) -> ChunkGrid:
    if chunk_px < 64:
        raise ConfigError(f"chunk_px must be at least 64 pixels, got {chunk_px}; e.g. 2048",
                          chunk_px=chunk_px)
    return ChunkGrid.from_shape(scene.shape, tile_px=chunk_px, overlap_px=0, chunk_px=chunk_px)


def _write_classes(
    scene: Scene, rule: ClassRule, names: dict[int, str], path: Path, grid: ChunkGrid,
    overwrite: bool, colors: dict[int, list[int]],
) -> None:
    """Write the class COG with its class names and colour table (QGIS: paletted)."""
    with RasterSink(path, like=scene, dtype="uint8", nodata=NODATA, overwrite=overwrite,
                    band_names=["class"], class_names=names, colormap=colors,
                    resampling="mode") as sink:
        for chunk in grid:
            data, valid, _ = scene.read_window_with_mask(chunk.core, pad="nodata")
            classes = rule(data)
            classes[~valid] = NODATA
            sink.write(chunk.core, classes[None])
        sink.finish()


def _reader(path: Path) -> Callable[[PixelWindow], NDArray[Any]]:
    raster = open_scene(path)

    def read(window: PixelWindow) -> NDArray[Any]:
        arr, _ = raster.read_window(window, bands=[1], pad="nodata")
        return np.asarray(arr[0])

    return read


CUT_VERTICES = 200_000
"""A class region whose parts waiting for their neighbours hold more vertices than
this (a cluster of bare ground connected across the scene) is written as pieces cut
at chunk borders, so the polygon stage's memory does not grow with the scene."""


def _class_batches(
    scene: Scene, path: Path, names: dict[int, str], keep: list[int], grid: ChunkGrid
) -> Iterator[gpd.GeoDataFrame]:
    """4-connected regions of each class in ``keep``, in batches (see :func:`_class_empty`)."""
    from terraseg.vector.vectorization import iter_roads

    windows = [c.core for c in grid]
    next_id = 1
    for value in keep:
        for frame in iter_roads(_reader(path), windows, scene.transform, scene.crs,
                                road_class=value, max_vertices=CUT_VERTICES):
            frame["class"] = names[value]
            frame.insert(0, "class_id", np.full(len(frame), value, np.int64))
            frame.insert(0, "segment_id", np.arange(next_id, next_id + len(frame)))
            next_id += len(frame)
            yield as_multi(gpd.GeoDataFrame(frame, geometry="geometry", crs=scene.crs))


def _class_empty(scene: Scene) -> gpd.GeoDataFrame:
    """The schema of the class regions: ``segment_id``, ``class_id``, ``area_m2``, ``class``."""
    return gpd.GeoDataFrame(
        {"segment_id": np.zeros(0, np.int64), "class_id": np.zeros(0, np.int64),
         "area_m2": np.zeros(0), "class": pd.Series([], dtype=object)},
        geometry=gpd.GeoSeries([], crs=scene.crs),
    )


def _run_classes(
    scene: Scene, path: Path, grid: ChunkGrid, rule: ClassRule, names: dict[int, str],
    every_class: bool, overwrite: bool, colors: dict[int, list[int]],
) -> Iterator[gpd.GeoDataFrame]:
    """Write the class COG; the regions of class 1 (or of every class), in batches."""
    _write_classes(scene, rule, names, path, grid, overwrite, colors)
    return _class_batches(scene, path, names, sorted(names) if every_class else [1], grid)


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    for p in paths:
        if p.exists() and not overwrite:
            raise OutputExistsError(
                f"output '{p}' already exists; pass --overwrite (overwrite=True) to replace it",
                path=p,
            )


def segment_scene(
    scene: Scene | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    method: SegmentMethod,
    expression: str | None = None,
    band: int = 1,
    index: str | None = None,
    threshold: float | None = None,
    k: int = 5,
    segment_size_m2: float = 50.0,
    compactness: float | None = None,
    scale: float = 100.0,
    min_size_m2: float = 12.5,
    sigma_px: float = 1.0,
    edge_low: float = 0.1,
    edge_high: float = 0.2,
    min_length_m: float = 2.0,
    chunk_px: int = 2048,
    seed: int = 0,
    overwrite: bool = False,
    labelling: bool = False,
    classes: Sequence[str] | None = None,
) -> SegmentResult:
    """Segment a scene without a model: the raster, ``segments.gpkg``/``.qgz``, ``segment.json``.

    Long because the docstring documents the parameters of every method; the
    body only checks them, fits the statistics and hands over to one runner.

    Parameters
    ----------
    scene
        An open :class:`Scene` or a path/URL.
    out_dir
        Output folder (created).
    method
        ``"threshold"``, ``"index"``, ``"kmeans"``, ``"slic"``, ``"watershed"``,
        ``"felzenszwalb"`` or ``"canny"`` (see the module notes).
    expression
        ``threshold``: boolean expression over ``b1..bN`` and ``ndvi``/``ndwi``/``exg``
        (see :func:`~terraseg.engine.segment_methods.evaluate_expression`). Without
        it, ``band > threshold``.
    band
        ``threshold`` without an expression: the 1-based band compared.
    index
        ``index``: ``"ndvi"``, ``"ndwi"`` (red, green, blue, nir) or ``"exg"`` (RGB).
    threshold
        ``threshold``/``index``: the value that separates the classes (pixels
        above it are class 1); default Otsu's threshold of a scene sample.
    k
        ``kmeans``: number of clusters, 2..254.
    segment_size_m2
        ``slic``/``watershed``: target mean segment area, m² (default 50 m², about
        14 x 14 px at 0.5 m): the spacing of the seeds.
    compactness
        Higher gives squarer segments. ``slic`` (default 10): colour/space balance
        (CIELAB units; bands 1-3 are taken as RGB). ``watershed`` (default
        :data:`WATERSHED_COMPACTNESS`, 0 = plain watershed).
    scale, min_size_m2
        ``felzenszwalb``: higher ``scale`` gives larger segments; segments smaller
        than ``min_size_m2`` (m²) are merged into a neighbour.
    sigma_px, edge_low, edge_high, min_length_m
        ``canny``: Gaussian smoothing (pixels), hysteresis thresholds on the Sobel
        magnitude of the grey level scaled to ``[0, 1]`` (a unit step gives 4), and
        the length below which spurs and isolated stubs are pruned (metres).
    chunk_px
        Chunk size, pixels; the result does not depend on it (region methods: up to
        the rare segment the two chunks of a face disagree on).
    seed
        Random seed of the k-means start.
    overwrite
        Replace existing outputs.
    labelling, classes
        Region methods: write ``labelling.gpkg``/``.qgz`` instead of ``segments.*``,
        the segments with an empty ``class`` field, a style by class and a QGIS form
        whose Value Map offers ``classes`` (names in id order; default background,
        building, road), for labelling by clicks (``terraseg train`` reads it).

    Returns
    -------
    SegmentResult

    Raises
    ------
    ConfigError
        A bad parameter (named in the message), before anything is written.
    OutputExistsError
        An output exists and ``overwrite`` is false.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    with bounded_gdal_cache():  # reads and COG writes: GDAL's cache bounded, as in predict
        sc = scene if isinstance(scene, Scene) else open_scene(scene)
        out = Path(out_dir)
        regions = method in REGION_METHODS
        if labelling and not regions:
            raise ConfigError(f"--for-labelling needs a region method (slic, watershed or "
                              f"felzenszwalb), not {method!r}")
        kinds = label_classes(classes) if labelling else []
        name = "labelling" if labelling else "segments"
        raster = out / ("segments.tif" if regions else "edges.tif" if method == "canny"
                        else "classes.tif")
        vectors, info, qgz = out / f"{name}.gpkg", out / "segment.json", out / f"{name}.qgz"
        grid = _grid(sc, chunk_px)
        params: dict[str, Any] = {"method": method, "chunk_px": chunk_px}
        if method == "canny":
            check_canny(sigma_px, edge_low, edge_high, min_length_m, params)
            low_high = _band_range(sc, list(range(1, min(sc.count, 3) + 1)))
            _check_outputs([raster, vectors, info, qgz], overwrite)
            out.mkdir(parents=True, exist_ok=True)
            lines = run_canny(sc, raster, grid, low_high=low_high, sigma_px=sigma_px,
                              edge_low=edge_low, edge_high=edge_high, min_length_m=min_length_m,
                              overwrite=overwrite)
            batches, empty = iter([lines]), lines.iloc[:0]
        elif regions:  # every parameter is checked (and statistics fitted) before any output
            step = slic_step_px(segment_size_m2, sc.gsd_xy_m[0] * sc.gsd_xy_m[1])
            label, halo = _labeller(sc, method, step, compactness, scale, min_size_m2, params)
            if method != "felzenszwalb":
                params["segment_size_m2"] = segment_size_m2
            _check_outputs([raster, vectors, info, qgz], overwrite)
            out.mkdir(parents=True, exist_ok=True)
            batches = _run_regions(sc, raster, grid, step, halo, label, overwrite)
            empty = _segment_empty(sc)
        else:
            rule, names = (
                _threshold_rule(sc, expression, band, threshold, params) if method == "threshold"
                else _index_rule(sc, index, threshold, params) if method == "index"
                else _kmeans_rule(sc, k, seed, params)
            )
            _check_outputs([raster, vectors, info, qgz], overwrite)
            out.mkdir(parents=True, exist_ok=True)
            batches = _run_classes(sc, raster, grid, rule, names, method == "kmeans", overwrite,
                                   params["colors"])
            empty = _class_empty(sc)
        layer = "edges" if method == "canny" else "segments"
        style = None
        if labelling:
            batches, empty, style = for_labelling(batches, empty, layer, kinds)
            params["label_classes"] = ",".join(c[1] for c in kinds)
        n = stream_segments(
            batches, empty, out, layer=layer, raster=raster, overwrite=overwrite, name=name,
            run_info={k: v for k, v in params.items() if not isinstance(v, list | dict)},
            imagery=Path(sc.path) if Path(sc.path).is_file() else None, style=style,
            show_raster=not labelling,
        )
        info.write_text(json.dumps({"scene": sc.path, **params}, indent=2) + "\n")
        return SegmentResult(method, raster, vectors, layer, n, params)


# ------------------------------------------------------------------ region methods


def _aligned_window(core: PixelWindow, step: int, halo: int) -> PixelWindow:
    """``core`` grown by ``halo``, out to the scene-wide ``step`` lattice (may leave the scene)."""
    r0 = math.floor((core.row_off - halo) / step) * step
    c0 = math.floor((core.col_off - halo) / step) * step
    r1 = math.ceil((core.row_stop + halo) / step) * step
    c1 = math.ceil((core.col_stop + halo) / step) * step
    return PixelWindow.from_bounds(r0, c0, r1, c1)


Labeller = Callable[[NDArray[np.float32], int], NDArray[np.int64]]


def _compactness(method: str, compactness: float | None) -> float:
    """The method's default compactness, or ``compactness`` once checked."""
    if compactness is None:
        return 10.0 if method == "slic" else WATERSHED_COMPACTNESS
    ok = compactness > 0 if method == "slic" else compactness >= 0
    if not (ok and math.isfinite(compactness)):
        need = "positive" if method == "slic" else "zero or positive"
        raise ConfigError(
            f"compactness must be {need} for {method}, got {compactness}; e.g. "
            f"{10.0 if method == 'slic' else WATERSHED_COMPACTNESS}",
            compactness=compactness,
        )
    return float(compactness)


def _labeller(
    scene: Scene, method: str, step: int, compactness: float | None, scale: float,
    min_size_m2: float, params: dict[str, Any],
) -> tuple[Labeller, int]:
    """``labels(features, step_px)`` of a region method and its halo, pixels (checked)."""
    if method == "felzenszwalb":
        px = float(scene.gsd_xy_m[0] * scene.gsd_xy_m[1])
        for name, value in (("scale", scale), ("min_size_m2", min_size_m2)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be positive, got {value}; e.g. "
                                  f"{100 if name == 'scale' else 12.5}", **{name: value})
        min_px = max(1, round(min_size_m2 / px))
        params.update(scale=scale, min_size_m2=min_size_m2, min_size_px=min_px)
        return (lambda f, step: felzenszwalb_window(f, scale=scale, min_size_px=min_px),
                FELZENSZWALB_HALO_PX)
    comp = _compactness(method, compactness)
    params.update(compactness=comp, step_px=step)
    if method == "slic":
        lab = min(scene.count, 3) == 3
        return (lambda f, s: slic_window(f, s, compactness=comp, lab=lab),
                SLIC_HALO_STEPS * step)
    return (lambda f, s: watershed_window(f, s, compactness=comp), SLIC_HALO_STEPS * step)


def _local_chunk(
    scene: Scene, core: PixelWindow, step: int, halo: int, label: Labeller,
    low: NDArray[np.float32], high: NDArray[np.float32], bands: list[int],
) -> tuple[NDArray[np.int32], PixelWindow]:
    """Local labels of one chunk over its window clipped to the scene (0 = nodata)."""
    win = _aligned_window(core, step, halo)
    data, valid, _ = scene.read_window_with_mask(win, bands=bands, pad="reflect")
    labels = label(normalize_bands(data, low, high), step)
    labels[~valid] = 0
    clipped = win.clip(scene.shape)
    return labels[clipped.relative_to(win).to_slices()].astype(np.int32), clipped


def _run_regions(
    scene: Scene, path: Path, grid: ChunkGrid, step: int, halo: int, label: Labeller,
    overwrite: bool,
) -> Iterator[gpd.GeoDataFrame]:
    """Two passes: local labels + face merge, then global ids, per-segment colour, polygons."""
    bands = [1, 2, 3] if scene.count >= 3 else list(range(1, scene.count + 1))
    low, high = _band_range(scene, bands)
    area = float(scene.gsd_xy_m[0] * scene.gsd_xy_m[1])
    merger = InstanceMerger(scene.shape, pixel_area_m2=area)
    windows: dict[tuple[int, int], PixelWindow] = {}
    with tempfile.TemporaryDirectory(prefix="terraseg-segments-") as tmp:
        for chunk in grid:
            labels, windows[chunk.index] = _local_chunk(scene, chunk.core, step, halo, label,
                                                        low, high, bands)
            merger.add_chunk(chunk.index, chunk.core, labels, window=windows[chunk.index])
            np.save(Path(tmp) / f"{chunk.index[0]}_{chunk.index[1]}.npy", labels)
        table = merger.finalize().table
        n = len(table.ids)
        count = np.zeros(n)
        sums = np.zeros((scene.count, n))
        with RasterSink(path, like=scene, dtype="uint32", nodata=0, overwrite=overwrite,
                        band_names=["segment_id"]) as sink:
            for chunk in grid:
                labels = np.load(Path(tmp) / f"{chunk.index[0]}_{chunk.index[1]}.npy")
                ids = merger.relabel(chunk.index, labels.astype(np.int64),
                                     window=windows[chunk.index])
                sink.write(chunk.core, ids[None])
                data, _ = scene.read_window(chunk.core, pad="nodata")
                c, s = mean_by_label(ids, data, n)
                count += c
                sums += s
            sink.finish()
    return _segment_batches(scene, path, grid, count, sums)


def _segment_batches(
    scene: Scene, path: Path, grid: ChunkGrid, count: NDArray[np.float64],
    sums: NDArray[np.float64],
) -> Iterator[gpd.GeoDataFrame]:
    """Polygons of ``segments.tif`` in batches (columns of :func:`_segment_empty`).

    A segment whose pixels are not 4-connected (cut by nodata) comes out as one
    row per piece that no chunk border joins, all with its id.
    """
    from terraseg.vector.vectorization import iter_buildings

    means = sums / np.maximum(count, 1)
    for polys in iter_buildings(_reader(path), [c.core for c in grid], scene.transform,
                                scene.crs, min_area_m2=0.0, regularize=False):
        ids = polys["building_id"].to_numpy(np.int64)
        out = gpd.GeoDataFrame({"segment_id": ids}, geometry=polys.geometry.array,
                               crs=scene.crs)
        for b in range(means.shape[0]):
            out[f"mean_b{b + 1}"] = means[b, ids - 1]
        out["area_m2"] = polys["area_m2"].to_numpy()
        perimeter = np.maximum(out.geometry.length.to_numpy(), 1e-12)
        out["compactness"] = 4 * np.pi * out.geometry.area.to_numpy() / perimeter**2
        yield as_multi(out)


def _segment_empty(scene: Scene) -> gpd.GeoDataFrame:
    """The schema of the region polygons: id, ``mean_b*``, ``area_m2``, ``compactness``."""
    cols: dict[str, Any] = {"segment_id": np.zeros(0, np.int64)}
    cols.update({f"mean_b{b + 1}": np.zeros(0) for b in range(scene.count)})
    cols.update(area_m2=np.zeros(0), compactness=np.zeros(0))
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=scene.crs))
