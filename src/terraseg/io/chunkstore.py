"""Per-chunk results on disk: what makes runs resumable and lets Dask workers write in parallel.

A worker turns one chunk into a :class:`ChunkOutput` (final interior labels,
optional quantised probabilities, and the small float32 *pieces* that overlap
neighbour chunks) and saves it with :meth:`DirStore.put`, atomically. The
file's presence is the chunk's done marker. Once a chunk and its neighbours are
stored, :func:`finish_core` finishes the chunk's seams from their pieces and the
whole core is stored too; the COGs are then streamed from the cores, chunk by
chunk, never as a scene-sized array.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import NODATA, assemble, labels_from_acc
from terraseg.io.manifest import MANIFEST_NAME, manifest_token
from terraseg.io.objstore import Store, open_store
from terraseg.io.raster_sink import RasterSink

__all__ = [
    "ChunkOutput",
    "CoreReader",
    "DirStore",
    "finish_core",
    "write_region",
]

Pieces = list[tuple[PixelWindow, np.ndarray]]


@dataclass(slots=True)
class ChunkOutput:
    """One chunk's contribution, small enough to ship between processes.

    ``labels`` are the final uint8 classes of ``chunk.interior`` (255 = nodata),
    ``None`` when the chunk was skipped as all-nodata; ``probs`` the quantised
    interior probabilities when requested; ``pieces`` the accumulator strips
    outside the interior; ``seam_valid`` the input validity on each seam window.
    """

    index: tuple[int, int]
    labels: np.ndarray | None
    probs: np.ndarray | None
    pieces: Pieces
    seam_valid: Pieces
    stats: dict[str, Any] = field(default_factory=dict)


def _pack(prefix: str, pieces: Pieces, out: dict[str, np.ndarray]) -> None:
    out[f"{prefix}_windows"] = np.array(
        [[w.row_off, w.col_off, w.height, w.width] for w, _ in pieces], dtype=np.int64
    ).reshape(-1, 4)
    for i, (_, arr) in enumerate(pieces):
        out[f"{prefix}_{i}"] = arr


def _unpack(prefix: str, data: Any) -> Pieces:
    windows = data[f"{prefix}_windows"]
    return [(PixelWindow(*map(int, w)), data[f"{prefix}_{i}"]) for i, w in enumerate(windows)]


class DirStore:
    """Chunk outputs as ``.npz`` objects in a :class:`~terraseg.io.objstore.Store`.

    ``root`` is a local folder (the usual ``<scene>/.chunks``) or an ``s3://``
    prefix. An object's presence means "done". Safe for many writers: each chunk
    has its own object, written atomically (a local temporary file renamed, or
    one S3 PUT). Finished cores and per-chunk labels of a cluster run live
    beside the chunk outputs under names that :meth:`done` does not count, and
    the resume manifest as ``manifest.json``.
    """

    def __init__(self, root: str | os.PathLike[str] | Store) -> None:
        self.store = open_store(root)

    def __repr__(self) -> str:
        return f"DirStore({self.store.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DirStore, (self.store,))

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def root(self) -> Path:
        """The folder of a local store (:class:`~terraseg.errors.ConfigError` for s3://)."""
        return _local_root(self.store)

    @staticmethod
    def name(index: tuple[int, int]) -> str:
        return f"chunk_r{index[0]:05d}_c{index[1]:05d}.npz"

    def path(self, index: tuple[int, int]) -> Path:
        return self.store.local_path(self.name(index))

    def has(self, index: tuple[int, int]) -> bool:
        return self.store.exists(self.name(index))

    def done(self) -> set[tuple[int, int]]:
        """Indices of every stored chunk."""
        out = set()
        for name in self.store.list("chunk_r"):
            stem = name.removesuffix(".npz")
            if "/" in stem or not stem.startswith("chunk_r") or "_c" not in stem:
                continue
            r, c = stem.removeprefix("chunk_r").split("_c")
            out.add((int(r), int(c)))
        return out

    def put(self, out: ChunkOutput) -> str:
        """Save ``out`` atomically; returns its name."""
        arrays: dict[str, np.ndarray] = {"index": np.array(out.index, np.int64)}
        if out.labels is not None:
            arrays["labels"] = out.labels
        if out.probs is not None:
            arrays["probs"] = out.probs
        _pack("piece", out.pieces, arrays)
        _pack("seam", out.seam_valid, arrays)
        name = self.name(out.index)
        self.store.put_arrays(name, arrays)
        return name

    def get(self, index: tuple[int, int]) -> ChunkOutput:
        data = self.store.get_arrays(self.name(index))
        return ChunkOutput(
            index=index,
            labels=data.get("labels"),
            probs=data.get("probs"),
            pieces=_unpack("piece", data),
            seam_valid=_unpack("seam", data),
        )

    def get_pieces(self, index: tuple[int, int]) -> Pieces:
        """Only the pieces of a chunk (a local store does not load its interior)."""
        if self.store.is_local:
            with np.load(self.path(index)) as data:
                return _unpack("piece", data)
        return _unpack("piece", self.store.get_arrays(self.name(index)))

    def clear(self) -> None:
        self.store.delete_prefix("")
        if self.store.is_local:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ other objects

    def put_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        """Save named arrays as ``<name>.npz`` atomically (a chunk's core, its labels...)."""
        self.store.put_arrays(f"{name}.npz", arrays)
        return f"{name}.npz"

    def get_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays saved by :meth:`put_arrays` under ``name``."""
        return self.store.get_arrays(f"{name}.npz")

    def exists(self, name: str) -> bool:
        return self.store.exists(f"{name}.npz")

    def names(self, prefix: str) -> set[str]:
        """Names (without ``.npz``) of the stored arrays whose name starts with ``prefix``."""
        return {n.removesuffix(".npz") for n in self.store.list(prefix) if n.endswith(".npz")}

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """``manifest.json`` (with its token), written before the first chunk is stored."""
        payload = {**manifest, "token": manifest_token(manifest)}
        self.store.put_bytes(MANIFEST_NAME, json.dumps(payload, indent=2, sort_keys=True,
                                                       default=str).encode())

    def read_manifest(self) -> dict[str, Any] | None:
        """The stored manifest; ``None`` when there is none (``ValueError`` if unreadable)."""
        try:
            data = json.loads(self.store.get_bytes(MANIFEST_NAME))
        except KeyError:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"'{self.store.url_of(MANIFEST_NAME)}' is not a JSON object")
        return data


def _local_root(store: Store) -> Path:
    """The folder of a local store; :class:`~terraseg.errors.ConfigError` for an object store."""
    if not store.is_local:
        store.local_path("x")  # raises the store's one-line error
    return Path(store.url)


def core_name(index: tuple[int, int]) -> str:
    """Store name of a chunk's finished core (:func:`finish_core`)."""
    return f"core_r{index[0]:05d}_c{index[1]:05d}"


def finish_core(
    grid: ChunkGrid, store: DirStore, index: tuple[int, int], *, n_classes: int,
    with_probs: bool,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The final labels (and quantised probabilities) of one chunk's whole core.

    The interior comes from the chunk's stored output as it is; each seam is
    assembled from the chunk's and its neighbours' pieces, the same blend as the
    streamed window path (:func:`terraseg.engine.pipeline.iter_predictions`). ``(None, None)``
    for a chunk skipped as all-nodata whose seams hold no prediction either.
    """
    chunk = grid.chunk(*index)
    out = store.get(index)
    core = chunk.core
    labels = np.full(core.shape, NODATA, np.uint8)
    probs = np.full((n_classes, *core.shape), NODATA, np.uint8) if with_probs else None
    any_data = False

    def place(window: PixelWindow, lab: np.ndarray | None, q: np.ndarray | None) -> None:
        nonlocal any_data
        if lab is None or window.height == 0 or window.width == 0:
            return
        rs = slice(window.row_off - core.row_off, window.row_stop - core.row_off)
        cs = slice(window.col_off - core.col_off, window.col_stop - core.col_off)
        labels[rs, cs] = lab
        if probs is not None and q is not None:
            probs[:, rs, cs] = q
        any_data = any_data or bool((lab != NODATA).any())

    place(chunk.interior, out.labels, out.probs)
    if out.seam_valid:
        # the chunk's own pieces first, then its neighbours' row-major: the order in which
        # the streamed path sums them, so the float sums, hence ties, are the same
        all_pieces = list(out.pieces)
        all_pieces += [p for n in grid.neighbours(chunk) for p in store.get_pieces(n.index)]
        for window, valid in out.seam_valid:
            acc = assemble(window, all_pieces, n_classes + 1)
            place(window, *labels_from_acc(acc, valid, with_probs=with_probs))
    if not any_data and out.labels is None:
        return None, None
    return labels, probs


class CoreReader:
    """``read(window)`` of the finished cores in a store, as if from ``classes.tif``.

    Windows may span several chunk cores; pixels of a core with no data read as
    nodata (255). ``band`` ``None`` reads the labels, an int ``k`` the probability
    band ``k`` (0-based).
    """

    def __init__(self, grid: ChunkGrid, store: DirStore, *, n_classes: int) -> None:
        self.grid = grid
        self.store = store
        self.n_classes = n_classes
        rows, cols = grid.shape_in_chunks
        self._row_stops = [grid.chunk(i, 0).core.row_stop for i in range(rows)]
        self._col_stops = [grid.chunk(0, j).core.col_stop for j in range(cols)]
        self._present = store.names("core_r")
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray] | None] = OrderedDict()

    def _span(self, stops: list[int], start: int, stop: int) -> range:
        first = next(i for i, s in enumerate(stops) if s > start)
        last = next(i for i, s in enumerate(stops) if s >= stop)
        return range(first, last + 1)

    def read(self, window: PixelWindow, bands: list[int] | None = None) -> np.ndarray:
        """``(h, w)`` labels, or ``(len(bands), h, w)`` probability bands (0-based)."""
        shape = window.shape if bands is None else (len(bands), *window.shape)
        out = np.full(shape, NODATA, np.uint8)
        inside = window.intersection(PixelWindow(0, 0, *self.grid.shape))
        if inside.is_empty:  # outside the scene reads nodata, as a boundless COG read does
            return out
        for i in self._span(self._row_stops, inside.row_off, inside.row_stop):
            for j in self._span(self._col_stops, inside.col_off, inside.col_stop):
                core = self.grid.chunk(i, j).core
                part = core.intersection(window)
                if part.is_empty:
                    continue
                data = self._core((i, j))
                if data is None:  # an all-nodata chunk
                    continue
                src = (slice(part.row_off - core.row_off, part.row_stop - core.row_off),
                       slice(part.col_off - core.col_off, part.col_stop - core.col_off))
                dst = (slice(part.row_off - window.row_off, part.row_stop - window.row_off),
                       slice(part.col_off - window.col_off, part.col_stop - window.col_off))
                if bands is None:
                    out[dst] = data["labels"][src]
                else:
                    out[(slice(None), *dst)] = data["probs"][bands][(slice(None), *src)]
        return out

    def _core(self, index: tuple[int, int]) -> dict[str, np.ndarray] | None:
        """A core's arrays, from a cache of the last few (a halo read touches up to 9)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        name = core_name(index)
        data = self.store.get_arrays(name) if name in self._present else None
        self._cache[index] = data
        while len(self._cache) > 9:
            self._cache.popitem(last=False)
        return data


def write_region(
    classes: RasterSink,
    probs: RasterSink | None,
    window: PixelWindow,
    labels: np.ndarray | None,
    qprobs: np.ndarray | None,
) -> None:
    """Write one finished region; ``None`` labels/probabilities mean all nodata."""
    if window.height == 0 or window.width == 0:
        return
    if labels is None:
        labels = np.full(window.shape, NODATA, np.uint8)
    classes.write(window, labels[None])
    if probs is not None:
        if qprobs is None:
            qprobs = np.full((probs.count, *window.shape), NODATA, np.uint8)
        probs.write(window, qprobs)
