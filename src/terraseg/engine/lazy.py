"""Lazy prediction of a Dask-backed ``xarray.DataArray``: a Dask graph, one block per chunk core.

:func:`predict_dataarray` never computes its input whole. It builds a graph of
two kinds of task over the engine's chunk grid:

* a *chunk* task per chunk computes the slice of the input that the chunk's
  read window needs (:class:`InputWindow`: only the input blocks it touches are
  read, inside the task), pads it exactly as
  :meth:`~terraseg.io.scene.Scene.read_window_with_mask` pads a file, and
  predicts the chunk (:func:`~terraseg.engine.chunk.predict_chunk`): final
  labels (or probabilities) for its interior, and the small accumulator strips
  it shares with its neighbours;
* a *part* task per chunk and neighbour (:func:`part_for`) keeps only what the
  chunk gives that neighbour's core (its strips cropped to the core), so a
  chunk's output is freed as soon as it ran, not when its last neighbour's core
  is done (which would hold two rows of chunk outputs instead of one);
* a *core* task per chunk assembles the chunk's core from its own part and
  those of its up to 8 neighbours, summing the strips in the same order as the
  streaming driver (:func:`~terraseg.engine.pipeline.iter_predictions`), so the
  labels are identical to a path-based run's.

The result is a Dask array whose chunks are the chunk cores. ``.compute()``
runs the graph; ``.rio.to_raster(path, lock=True)`` streams it block by block
to a file (Dask frees each chunk's output once its neighbours' cores are done).
Each task builds its model once per process
(:func:`~terraseg.engine.distributed.get_worker_predictor`), so the graph also
runs on a ``distributed`` cluster. Peak memory is about one chunk's working
set per scheduler thread, plus the input blocks and seam strips of the chunks
in flight; it does not grow with the scene's area.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow
from terraseg.core.stitch import assemble, labels_from_acc, normalize
from terraseg.engine.chunk import NODATA, ChunkInput, MemoryTrimmer, Ramp, predict_chunk
from terraseg.engine.distributed import PredictorOptions, get_worker_predictor
from terraseg.errors import BandError, ConfigError, CRSError, SceneReadError
from terraseg.io.boundless import PadMode, fill_window, plan_read, values_valid
from terraseg.io.raster_sink import bounded_gdal_cache

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["InputWindow", "LazyChunk", "assemble_core", "part_for", "predict_dataarray"]

Output = Literal["labels", "probabilities"]
#: ``((sub, div), clip)``: the fitted normalisation per model band, and the clip range per
#: model band (``None``: no clipping).
Scaling = tuple[tuple[tuple[float, ...], tuple[float, ...]],
                tuple[tuple[float, float], ...] | None]

_MODEL_POOL: list[cf.ThreadPoolExecutor] = []
_MODEL_POOL_LOCK = threading.Lock()
_TRIM = MemoryTrimmer()


def _model_thread() -> cf.ThreadPoolExecutor:
    """The one thread of this process that runs chunks through the model.

    As in the streaming driver, one chunk is on the model at a time (the model
    already uses every core, or the one GPU) while the scheduler's other threads
    read the next chunks' input windows. One thread, not a lock: the predictor
    keeps its batch buffers per thread (50 MB at batch 8 of 512² tiles), and an
    accumulator (76 MB at ``chunk_px=2048``) is then held once, not once per
    scheduler thread.
    """
    with _MODEL_POOL_LOCK:
        if not _MODEL_POOL:
            _MODEL_POOL.append(
                cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="terraseg-lazy-model"))
        return _MODEL_POOL[0]


class InputWindow:
    """A lazy slice of the input, computed inside the chunk task that needs it.

    Not a Dask collection as far as ``dask.delayed`` can see, on purpose: had
    the slices been graph dependencies, Dask's ordering would read most of the
    input before the first chunk ran (measured: the whole 2048² input in
    memory at once). Computed in its task, an input window lives only while its
    chunk is predicted. Input blocks a halo shares with a neighbour are read
    again by that neighbour's task.
    """

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def compute(self) -> np.ndarray:
        """The window as NumPy ``(band, y, x)``, read with the synchronous scheduler.

        GDAL's block cache is capped meanwhile (as for a path-based run), so
        reading a large file through rioxarray does not fill it with the scene.
        """
        with bounded_gdal_cache():
            return np.asarray(self.array.compute(scheduler="synchronous"))


@dataclass(slots=True)
class LazyChunk:
    """What a chunk task returns: its interior result and the strips its neighbours need.

    ``interior`` is uint8 labels ``(h, w)`` or float32 probabilities ``(K, h, w)``
    over ``chunk.interior`` (``None`` when the chunk was all nodata); ``pieces``
    are accumulator strips in scene pixel windows; ``seam_valid`` the input
    validity of each of the chunk's seam windows.
    """

    interior: np.ndarray | None
    pieces: list[tuple[PixelWindow, np.ndarray]]
    seam_valid: list[tuple[PixelWindow, np.ndarray]]


def _finish(acc: np.ndarray, valid: np.ndarray, output: Output) -> np.ndarray:
    """Labels or probabilities (NaN where invalid) from an accumulator, as the eager paths do."""
    if output == "labels":
        labels, _ = labels_from_acc(acc, valid)
        return labels
    probs, ok = normalize(acc)
    return np.where(valid & ok, probs, np.nan).astype(np.float32)


def _chunk_task(
    window: InputWindow,
    chunk: Chunk,
    grid: ChunkGrid,
    opts: PredictorOptions,
    nodata: float | None,
    pad: PadMode,
    ramp: Ramp,
    output: Output,
    scaling: Scaling,
) -> LazyChunk:
    """Read ``window`` (the input over the chunk's source window), pad it, predict the chunk.

    ``scaling`` is the fitted ``((sub, div), clip)`` of the client's adapted input (clip
    ranges per model band, or ``None``): the worker's own spec holds the card's.
    """
    predictor, spec = get_worker_predictor(opts)
    block = window.compute()
    plan = plan_read(chunk.read_window, grid.shape, pad)
    valid = values_valid(block, nodata)
    data, full_valid = fill_window(plan, block, valid, fill=0 if nodata is None else nodata)
    assert full_valid is not None  # internal invariant: a mask was passed in
    normalize, clip = scaling
    if clip is not None:
        data = data.copy() if data is block else data
        for k, (lo, hi) in enumerate(clip):
            np.clip(data[k], *np.asarray((lo, hi)).astype(data.dtype), out=data[k])
    x = data if full_valid.any() else np.empty((0, 0, 0), data.dtype)
    norm = (np.asarray(normalize[0], np.float32), np.asarray(normalize[1], np.float32))
    inp = ChunkInput(chunk, x, full_valid, {"read": 0.0}, norm)
    del block, data
    return _model_thread().submit(_predict, inp, grid, predictor, spec, ramp, output).result()


def _predict(
    inp: ChunkInput, grid: ChunkGrid, predictor: Any, spec: Any, ramp: Ramp, output: Output
) -> LazyChunk:
    """On the model thread: predict one chunk and reduce its interior to the result."""
    res = predict_chunk(inp, grid, predictor, ramp=ramp)
    interior = None
    if res.interior is not None:
        if res.interior.shape[0] != spec.n_classes + 1:
            raise BandError(
                f"model '{spec.name}' returned {res.interior.shape[0] - 1} channels but "
                f"its spec lists {spec.n_classes} classes; fix the model card",
                name=spec.name,
            )
        interior = _finish(res.interior, res.interior_valid, output)
    # copies: a view would keep the chunk's validity mask alive until its neighbours run
    seams = [(w, np.ascontiguousarray(v)) for w, v in res.seam_valid]
    out = LazyChunk(interior, res.pieces, seams)
    del res, inp
    _TRIM()  # give the freed accumulator's pages back, as the streaming driver does
    return out


def part_for(result: LazyChunk, chunk: Chunk, dest: Chunk) -> LazyChunk:
    """What ``chunk``'s output gives ``dest``'s core: its strips cropped to that core (copies).

    For ``dest`` the chunk itself, also its interior and seam validity. Cropping
    does not change a sum: a chunk's strips do not overlap, so each pixel still
    gets one value per chunk, in the same chunk order.
    """
    pieces = []
    for window, arr in result.pieces:
        inter = window.intersection(dest.core)
        if not inter.is_empty:
            crop = arr[(slice(None), *inter.relative_to(window).to_slices())]
            pieces.append((inter, np.ascontiguousarray(crop)))
    if dest.index == chunk.index:
        return LazyChunk(result.interior, pieces, result.seam_valid)
    return LazyChunk(None, pieces, [])


def assemble_core(
    own: LazyChunk,
    neighbours: list[LazyChunk],
    chunk: Chunk,
    grid: ChunkGrid,
    n_classes: int,
    output: Output,
) -> np.ndarray:
    """The final result over ``chunk.core`` from its own and its neighbours' parts.

    ``own`` and ``neighbours`` are chunk outputs or their :func:`part_for` this
    core; ``neighbours`` in :meth:`~terraseg.core.grid.ChunkGrid.neighbours` order.
    Seams sum the strips of the chunks whose extent reaches them, the chunk's
    own first, as :func:`~terraseg.engine.pipeline.iter_predictions` does, so
    the floating-point sums (and the labels) are the same.
    """
    core = chunk.core
    if output == "labels":
        out = np.full(core.shape, NODATA, np.uint8)
    else:
        out = np.full((n_classes, *core.shape), np.nan, np.float32)
    inner = chunk.interior.relative_to(core).to_slices()
    if own.interior is not None and not chunk.interior.is_empty:
        out[(..., *inner)] = own.interior
    around = list(zip(grid.neighbours(chunk), neighbours, strict=True))
    for window, valid in own.seam_valid:
        pieces = list(own.pieces)
        for other, result in around:
            if not other.extent.intersection(window).is_empty:
                pieces.extend(result.pieces)
        acc = assemble(window, pieces, n_classes + 1)
        out[(..., *window.relative_to(core).to_slices())] = _finish(acc, valid, output)
    return out


def _input_metadata(da: xr.DataArray) -> tuple[Any, Any, float | None]:
    """CRS, north-up transform and nodata of a ``(band, y, x)`` DataArray, checked."""
    import rioxarray  # noqa: F401  (registers .rio)

    crs = da.rio.crs
    if crs is None:
        raise CRSError("the DataArray has no CRS; set one with da.rio.write_crs('EPSG:32633')")
    transform = da.rio.transform(recalc=True)
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise SceneReadError(
            f"the DataArray's grid {tuple(transform)[:6]} is not north-up (x increasing, y "
            "decreasing); sort it with da.sortby('x').sortby('y', ascending=False)",
        )
    nodata = da.rio.nodata
    return crs, transform, None if nodata is None else float(nodata)


def _bands(da: xr.DataArray, spec: Any) -> tuple[int, ...]:
    """The DataArray bands to feed the model: the card's, or a single band repeated (warns)."""
    import warnings

    from terraseg.engine.adapt import BandWarning

    need = int(spec.input.n_bands)
    wanted: tuple[int, ...] = tuple(int(b) for b in spec.input.bands)
    if max(wanted) <= da.shape[0]:
        return wanted
    if da.shape[0] == 1:
        warnings.warn(
            f"the DataArray has one band; it is repeated to the {need} input bands of model "
            f"'{spec.name}' (bands {[1] * need})",
            BandWarning,
            stacklevel=3,
        )
        return (1,) * need
    raise BandError(
        f"model '{spec.name}' reads bands {list(wanted)} but the DataArray has "
        f"{da.shape[0]} band(s); pass a (band, y, x) array with {max(wanted)}+ bands",
        bands=wanted,
    )


def _scaling(da: xr.DataArray, inp: Any, nodata: float | None) -> Scaling:
    """The fitted normalisation of ``da`` for ``inp``, from one decimated sample (≤ 4 Mpx).

    As :func:`terraseg.engine.adapt.adapt_scene` does for files: values above 255
    given to a model that normalises 8-bit values are stretched from their 2-98 %
    percentiles; ``percentile``/``minmax`` cards get their statistics.
    """
    import math

    from terraseg.engine.adapt import fit_scaling, needs_scaling, sample_stats

    dtype = str(da.dtype)
    stats = None
    if needs_scaling(inp, dtype):
        unique = sorted(set(inp.bands))
        step = max(1, math.ceil(math.sqrt(da.shape[1] * da.shape[2] / 4_000_000)))
        sample = np.asarray(
            da.data[[b - 1 for b in unique]][:, ::step, ::step].compute(scheduler="synchronous")
        )
        stats = sample_stats(sample, values_valid(sample, nodata), unique, step)
    fitted, clip, _ = fit_scaling(inp, stats, dtype, int(da.shape[0]))
    sub, div = fitted.affine()
    per_band = None
    if clip is not None:  # fit_scaling sets a range for every model band, or none
        per_band = tuple(cast("tuple[float, float]", clip[b - 1]) for b in inp.bands)
    return (tuple(float(v) for v in sub), tuple(float(v) for v in div)), per_band


def _check_gsd(crs: Any, transform: Any, shape: tuple[int, int], model: str) -> None:
    """Refuse a DataArray whose GSD is outside the model card's tolerance (one line)."""
    import math

    from terraseg.engine.adapt import model_gsd
    from terraseg.io.georef import gsd_xy_m

    gsd = model_gsd(model)
    if gsd is None:
        return
    gx, gy = gsd_xy_m(crs, transform, shape)
    scene_m = math.sqrt(gx * gy)
    model_m, tol, name = gsd
    if abs(scene_m / model_m - 1.0) > tol + 1e-9:
        raise ConfigError(
            f"the DataArray has a GSD of {scene_m:.3g} m but model '{name}' was trained at "
            f"{model_m:g} m (±{tol:.0%}); a Dask-backed input is not resampled on the fly: "
            "predict the file path instead (it is), or reproject the array first "
            f"(da.rio.reproject(da.rio.crs, resolution=...) to {model_m:g} m)",
            gsd_m=scene_m, model_gsd_m=model_m,
        )


def _graph(
    arr: Any,
    grid: ChunkGrid,
    opts: PredictorOptions,
    *,
    n_classes: int,
    nodata: float | None,
    pad: PadMode,
    ramp: Ramp,
    output: Output,
    scaling: Scaling,
) -> Any:
    """The Dask array of the result: chunk tasks, their parts, one core block per chunk."""
    import dask.array as dsa
    from dask.base import tokenize
    from dask.delayed import delayed

    name = tokenize(arr.name, opts, grid, pad, ramp, output, scaling)
    outs = {}
    for chunk in grid:
        src = plan_read(chunk.read_window, grid.shape, pad).source
        assert src is not None  # a chunk's read window always holds its core
        block = arr[:, src.row_off : src.row_stop, src.col_off : src.col_stop]
        outs[chunk.index] = delayed(_chunk_task, pure=True)(
            InputWindow(block), chunk, grid, opts, nodata, pad, ramp, output, scaling,
            dask_key_name=f"terraseg-chunk-{name}-{chunk.index[0]}-{chunk.index[1]}",
        )
    parts = {}
    for chunk in grid:
        for dest in (chunk, *grid.neighbours(chunk)):
            (i, j), (di, dj) = chunk.index, dest.index
            parts[chunk.index, dest.index] = delayed(part_for, pure=True)(
                outs[chunk.index], chunk, dest,
                dask_key_name=f"terraseg-part-{name}-{i}-{j}-{di}-{dj}",
            )
    rows, cols = grid.shape_in_chunks
    lead = (n_classes,) if output == "probabilities" else ()
    dtype = np.float32 if output == "probabilities" else np.uint8
    blocks = []
    for ci in range(rows):
        row = []
        for cj in range(cols):
            chunk = grid.chunk(ci, cj)
            core = delayed(assemble_core, pure=True)(
                parts[chunk.index, chunk.index],
                [parts[n.index, chunk.index] for n in grid.neighbours(chunk)], chunk, grid,
                n_classes, output, dask_key_name=f"terraseg-core-{name}-{ci}-{cj}",
            )
            row.append(dsa.from_delayed(  # type: ignore[no-untyped-call]
                core, shape=(*lead, *chunk.core.shape), dtype=dtype))
        blocks.append(row)
    return dsa.block(blocks)  # type: ignore[no-untyped-call]


def predict_dataarray(
    da: xr.DataArray,
    *,
    model: str,
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    device: str = "auto",
    batch_size: int = 8,
    probabilities: bool = False,
    pad: PadMode = "reflect",
    ramp: Ramp = "cosine",
    tta: str = "none",
) -> xr.DataArray:
    """Predict a Dask-backed ``(band, y, x)`` DataArray lazily; see the module docstring.

    Parameters
    ----------
    da
        Imagery with a CRS (rioxarray), e.g. ``rioxarray.open_rasterio(path,
        chunks=...)`` or an odc-stac load; bands in the model's order. Pixels are
        invalid where every selected band equals ``da.rio.nodata`` or any is NaN.
    model
        Bundled model name or checkpoint path.
    tile_px, overlap_px, chunk_px
        The global tile lattice and the chunk size, in pixels.
    probabilities
        Per-class probabilities ``(class, y, x)`` float32 (NaN where invalid)
        instead of uint8 labels (255 = nodata).
    tta
        ``"d4"``: average the eight flips and rotations of each tile.

    Raises
    ------
    ConfigError
        The DataArray's GSD is outside the model card's tolerance: a lazy input
        is not resampled on the fly (a file path is; or reproject the array).

    Returns
    -------
    xarray.DataArray
        Dask-backed, on ``da``'s grid and coordinates, chunked by the engine's
        chunk cores, with the CRS, nodata and ``attrs["classes"]`` /
        ``attrs["colors"]``. Nothing is computed until asked.
    """
    import rioxarray  # noqa: F401
    import xarray as xr

    da = da if da.ndim == 3 else da.expand_dims("band")
    crs, transform, nodata = _input_metadata(da)
    opts = PredictorOptions(model=model, device=device, batch_size=batch_size, tta=tta)
    _, spec = get_worker_predictor(opts)  # validates the model before the graph exists
    _check_gsd(crs, transform, (int(da.shape[1]), int(da.shape[2])), model)
    bands = _bands(da, spec)
    scaling = _scaling(da, spec.input.model_copy(update={"bands": bands}), nodata)
    shape = (int(da.shape[1]), int(da.shape[2]))
    grid = ChunkGrid.from_shape(shape, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    output: Output = "probabilities" if probabilities else "labels"
    data = _graph(da.data[[b - 1 for b in bands]], grid, opts, n_classes=spec.n_classes,
                  nodata=nodata, pad=pad, ramp=ramp, output=output, scaling=scaling)
    dims = ("class", "y", "x") if probabilities else ("y", "x")
    coords: dict[str, Any] = {"y": da["y"].values, "x": da["x"].values}
    if probabilities:
        coords["class"] = [c.name for c in spec.classes]
    result = xr.DataArray(data, dims=dims, coords=coords,
                          name="probabilities" if probabilities else "classes")
    result = result.rio.write_crs(crs).rio.write_transform(transform)
    if not probabilities:
        result = result.rio.write_nodata(NODATA)
    result.attrs.update(classes=spec.class_names(), colors=spec.colormap(), model=spec.name,
                        **spec.building_attrs())
    return cast("xr.DataArray", result)
