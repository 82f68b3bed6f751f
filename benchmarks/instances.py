"""Global instance ids over big scenes: time and peak memory of :class:`InstanceMerger`.

The scene is virtual: a synthetic city's truth instance raster (``make_city``,
``--base-px`` square, cached) tiled ``k x k`` times with new ids in each copy, read
window by window and never held whole. Each chunk of a :class:`ChunkGrid` is read
over its extent (core + halo), relabelled to local ids ``1..n`` (an oracle
standing in for a per-chunk model + watershed) and fed to the merger; after
``finalize()`` a second streaming pass relabels every chunk core to global ids
and checks them against the truth (a bijection of ids: exact).

Each size runs in its own process so that its peak RSS (``getrusage``) is its
own. Prints one human line per size, a summary of how time and memory grow,
and one JSON line.

Usage::

    python benchmarks/instances.py                      # ~10 000 and ~100 000 buildings
    python benchmarks/instances.py --buildings 10000 100000 300000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.instances import InstanceMerger

CACHE = Path(os.environ.get("TERRASEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "terraseg-bench"))


def base_truth(size_px: int, seed: int) -> NDArray[np.uint32]:
    """The instance raster of a cached synthetic city (small: one copy of the tiling)."""
    path = CACHE / f"city_{size_px}_s{seed}.tif"
    inst = path.with_name(f"{path.stem}.instances.tif")
    if not inst.exists():
        from terraseg.synthetic import make_city  # heavy imports: only when building the cache

        CACHE.mkdir(parents=True, exist_ok=True)
        make_city(path, size_px=size_px, seed=seed, overwrite=True)
    with rasterio.open(inst) as ds:
        arr: NDArray[np.uint32] = ds.read(1)
    return arr


class VirtualScene:
    """``base`` tiled ``k x k``, copy ``t`` holding ids ``base + t * stride`` (0 stays 0)."""

    def __init__(self, base: NDArray[np.uint32], k: int) -> None:
        self.base = base
        self.k = k
        self.stride = int(base.max()) + 1
        self.shape = (base.shape[0] * k, base.shape[1] * k)
        self.n_buildings = k * k * int(np.count_nonzero(np.bincount(base.ravel())[1:]))
        if k * k * self.stride >= 2**32:
            raise SystemExit(f"{k} x {k} copies overflow uint32 ids; use a smaller base")

    def read(self, w: PixelWindow) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
        """``(truth ids, local ids 1..n)`` over ``w``; memory follows the window only."""
        h, wd = self.base.shape
        rows = np.arange(w.row_off, w.row_stop)
        cols = np.arange(w.col_off, w.col_stop)
        ids = self.base[np.ix_(rows % h, cols % wd)]
        copy_r, copy_c = rows // h, cols // wd
        # truth: ids of copy (r, c) offset by (r * k + c) * stride
        copy = (copy_r[:, None] * self.k + copy_c[None, :]).astype(np.uint32)
        truth = np.where(ids > 0, ids + copy * np.uint32(self.stride), 0).astype(np.uint32)
        # local: the same objects keyed by the copy's position within the window, then
        # renumbered 1..n (a chunk-local labelling, as a per-chunk model would give)
        span_c = int(copy_c[-1] - copy_c[0]) + 1
        near = (copy_r - copy_r[0])[:, None] * span_c + (copy_c - copy_c[0])[None, :]
        key = np.where(ids > 0, ids + near.astype(np.uint32) * np.uint32(self.stride), 0)
        present = np.flatnonzero(np.bincount(key.ravel()))
        lut = np.zeros(int(present[-1]) + 1 if present.size else 1, np.uint32)
        nz = present[present > 0]
        lut[nz] = np.arange(1, nz.size + 1, dtype=np.uint32)
        local: NDArray[np.uint32] = lut[key]
        return truth, local


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(target: int, base_px: int, seed: int, chunk_px: int) -> dict[str, Any]:
    base = base_truth(base_px, seed)
    per_copy = int(np.count_nonzero(np.bincount(base.ravel())[1:]))
    k = max(1, round(math.sqrt(target / per_copy)))
    scene = VirtualScene(base, k)
    grid = ChunkGrid.from_shape(scene.shape, tile_px=512, overlap_px=64, chunk_px=chunk_px)
    rss_start = rss_mb()
    merger = InstanceMerger.from_grid(grid, pixel_area_m2=0.25)
    t_read = t_add = t_relabel = 0.0
    cpu0 = 0.0
    cpu_merge = 0.0  # CPU seconds in the merger (steadier than wall time on a busy machine)
    peak_nbytes = 0
    for chunk in grid:  # pass 1
        t0 = time.perf_counter()
        _, labels = scene.read(chunk.extent)
        t1, cpu0 = time.perf_counter(), time.process_time()
        merger.add_chunk(chunk.index, chunk.core, labels, window=chunk.extent)
        t2, cpu_merge = time.perf_counter(), cpu_merge + time.process_time() - cpu0
        t_read += t1 - t0
        t_add += t2 - t1
        peak_nbytes = max(peak_nbytes, merger.nbytes)
    rss_pass1 = rss_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    table = merger.finalize()
    t_finalize, cpu_merge = time.perf_counter() - t0, cpu_merge + time.process_time() - cpu0
    pairs = []
    for chunk in grid:  # pass 2 (a real run writes each core to a COG here)
        t0 = time.perf_counter()
        truth, labels = scene.read(chunk.extent)
        t1, cpu0 = time.perf_counter(), time.process_time()
        out = table.relabel(chunk.index, labels, window=chunk.extent)
        t2, cpu_merge = time.perf_counter(), cpu_merge + time.process_time() - cpu0
        t_read += t1 - t0
        t_relabel += t2 - t1
        core_truth = truth[chunk.core.relative_to(chunk.extent).to_slices()]
        keys = (out.astype(np.uint64) << np.uint64(32)) | core_truth.astype(np.uint64)
        pairs.append(np.unique(keys))
    keys = np.unique(np.concatenate(pairs))
    glob, tru = keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)
    exact = bool(
        ((glob == 0) == (tru == 0)).all()
        and np.unique(glob).size == keys.size == np.unique(tru).size
        and table.n_instances == scene.n_buildings
    )
    merge_s = t_add + t_finalize + t_relabel
    return {
        "target_buildings": target,
        "buildings": scene.n_buildings,
        "instances": table.n_instances,
        "exact": exact,
        "shape": list(scene.shape),
        "megapixels": scene.shape[0] * scene.shape[1] / 1e6,
        "chunks": len(grid),
        "chunk_core_px": grid.summary()["chunk_core_px"],
        "merge_s": merge_s,
        "merge_cpu_s": cpu_merge,
        "add_s": t_add,
        "finalize_s": t_finalize,
        "relabel_s": t_relabel,
        "read_s": t_read,
        "us_per_building": 1e6 * merge_s / max(scene.n_buildings, 1),
        "cpu_us_per_building": 1e6 * cpu_merge / max(scene.n_buildings, 1),
        "merger_peak_mb": peak_nbytes / 2**20,
        "merger_final_mb": merger.nbytes / 2**20,
        "relabel_table_mb": table.nbytes / 2**20,
        "labels_held": merger.n_labels,
        "rss_start_mb": rss_start,
        "rss_after_pass1_mb": rss_pass1,
        "peak_rss_mb": rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--buildings", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--base-px", type=int, default=1024, help="side of the tiled truth raster")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-px", type=int, default=2048)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.base_px, args.seed, args.chunk_px)))
        return 0
    base_truth(args.base_px, args.seed)  # build the cache once, outside the timings
    results = []
    for n in args.buildings:
        cmd = [sys.executable, __file__, "--one", str(n), "--base-px", str(args.base_px),
               "--seed", str(args.seed), "--chunk-px", str(args.chunk_px)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['buildings']:>8,d} buildings  {r['shape'][0]}x{r['shape'][1]} px "
            f"({r['megapixels']:.0f} Mpx, {r['chunks']} chunks): merge {r['merge_s']:.2f} s "
            f"(add {r['add_s']:.2f} + finalize {r['finalize_s']:.2f} + relabel "
            f"{r['relabel_s']:.2f}; {r['us_per_building']:.1f} us/building; CPU "
            f"{r['merge_cpu_s']:.2f} s), "
            f"reading {r['read_s']:.1f} s; merger peak {r['merger_peak_mb']:.2f} MiB, "
            f"relabel table {r['relabel_table_mb']:.2f} MiB; peak RSS "
            f"{r['peak_rss_mb']:.0f} MiB (start {r['rss_start_mb']:.0f}); "
            f"exact={r['exact']}"
        )
    summary: dict[str, Any] = {"runs": results}
    if len(results) > 1:
        a, b = results[0], results[-1]
        summary["growth"] = {
            "buildings_x": b["buildings"] / a["buildings"],
            "merge_time_x": b["merge_s"] / a["merge_s"],
            "merge_cpu_x": b["merge_cpu_s"] / a["merge_cpu_s"],
            "pixels_x": b["megapixels"] / a["megapixels"],
            "merger_peak_bytes_x": b["merger_peak_mb"] / a["merger_peak_mb"],
            "relabel_table_bytes_x": b["relabel_table_mb"] / a["relabel_table_mb"],
            "peak_rss_x": b["peak_rss_mb"] / a["peak_rss_mb"],
            "peak_rss_above_start_x": (b["peak_rss_mb"] - b["rss_start_mb"])
            / max(a["peak_rss_mb"] - a["rss_start_mb"], 1e-9),
        }
        g = summary["growth"]
        print(
            f"growth x{g['buildings_x']:.1f} buildings (x{g['pixels_x']:.1f} pixels): merge time "
            f"x{g['merge_time_x']:.1f} (CPU x{g['merge_cpu_x']:.1f}), "
            f"merger bytes x{g['merger_peak_bytes_x']:.1f}, relabel table "
            f"x{g['relabel_table_bytes_x']:.1f}, peak RSS x{g['peak_rss_x']:.2f}"
        )
    print(json.dumps(summary))
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
