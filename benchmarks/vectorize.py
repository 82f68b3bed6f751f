"""Throughput and memory of chunked vectorization: buildings/s, road km/s, peak RSS.

The scene is a *virtual* raster: a synthetic city's truth rasters tiled
``tiles x tiles`` times, read window by window through a function that never
materialises the whole scene (each repeat's building ids are shifted so they stay
unique). Buildings are vectorized with regularization, consumed batch by batch
(:func:`terraseg.vector.vectorization.iter_buildings`, counted then dropped) as a writer would,
so the peak RSS shows whether memory stays flat as the scene grows. Roads are
vectorized (polygons) and skeletonized (centerlines + graph) on the same virtual scene.

Each measurement runs in a fresh process so that its peak RSS is its own. Prints
one human line per measurement and one JSON line with everything. On a shared
machine, compare the CPU-seconds figures (process time, all threads) and the
1-minute load average recorded with each run, not only the wall-clock rates.

Usage::

    python benchmarks/vectorize.py                   # ~10k and ~100k buildings
    python benchmarks/vectorize.py --tiles 3 9 --chunk-px 2048 --roads-tiles 3
"""

from __future__ import annotations

import argparse
import json
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

from terraseg.core.grid import PixelWindow

CACHE = Path(os.environ.get("TERRASEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "terraseg-bench"))


def city(size_px: int, seed: int) -> Path:
    """Path stem of a cached synthetic city (made on first use)."""
    stem = CACHE / f"vec_city_{size_px}_s{seed}"
    if not Path(f"{stem}.instances.tif").exists():
        from terraseg.synthetic import make_city  # heavy imports: only when needed

        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_city(f"{stem}.tif", size_px=size_px, seed=seed, overwrite=True)
        print(f"made {stem}.tif in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return stem


class VirtualRaster:
    """``tiles x tiles`` copies of ``base``, read by window; ids shifted per copy.

    Attributes
    ----------
    seconds
        Time spent inside :meth:`read` (assembling windows), to report separately.
    """

    def __init__(self, base: np.ndarray[Any, Any], tiles: int, relabel: bool) -> None:
        self.base = base
        self.tiles = tiles
        self.stride = int(base.max()) + 1 if relabel else 0
        self.shape = (base.shape[0] * tiles, base.shape[1] * tiles)
        self.nonzero = (base != 0).astype(base.dtype) if relabel else base
        self.seconds = 0.0

    def read(self, window: PixelWindow) -> np.ndarray[Any, Any]:
        t0 = time.perf_counter()
        th, tw = self.base.shape
        ti, tj = window.row_off // th, window.col_off // tw
        if (window.row_stop - 1) // th == ti and (window.col_stop - 1) // tw == tj:
            # inside one copy (the usual case): a slice, ids shifted where non-zero
            r0, c0 = window.row_off - ti * th, window.col_off - tj * tw
            rows, cols = slice(r0, r0 + window.height), slice(c0, c0 + window.width)
            if self.stride:
                shift = self.base.dtype.type((ti * self.tiles + tj) * self.stride)
                out = self.nonzero[rows, cols] * shift
                out += self.base[rows, cols]
            else:
                out = self.base[rows, cols].copy()
            self.seconds += time.perf_counter() - t0
            return out
        rows = np.arange(window.row_off, window.row_stop)
        cols = np.arange(window.col_off, window.col_stop)
        out = self.base[np.ix_(rows % th, cols % tw)]
        if self.stride:
            copy = (rows // th)[:, None] * self.tiles + (cols // tw)[None, :]
            out = np.where(out != 0, out + (copy * self.stride).astype(out.dtype), 0)
        self.seconds += time.perf_counter() - t0
        return out


def windows(shape: tuple[int, int], chunk_px: int) -> list[PixelWindow]:
    rows, cols = shape
    return [
        PixelWindow(r, c, min(chunk_px, rows - r), min(chunk_px, cols - c))
        for r in range(0, rows, chunk_px)
        for c in range(0, cols, chunk_px)
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_buildings(stem: Path, tiles: int, chunk_px: int, regularize: bool) -> dict[str, Any]:
    from terraseg.vector.vectorization import iter_buildings

    with rasterio.open(f"{stem}.instances.tif") as ds:
        base, transform, crs = ds.read(1), ds.transform, ds.crs
    raster = VirtualRaster(base, tiles, relabel=True)
    wins = windows(raster.shape, chunk_px)
    rss_setup = peak_rss_mb()
    n = 0
    area = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in iter_buildings(
        raster.read, wins, transform, crs, regularize=regularize, min_area_m2=0.0
    ):
        n += len(batch)
        area += float(batch["area_m2"].sum())
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    return {
        "what": "buildings",
        "regularize": regularize,
        "tiles": tiles,
        "scene_px": list(raster.shape),
        "chunk_px": chunk_px,
        "chunks": len(wins),
        "buildings": n,
        "seconds": seconds,
        "read_seconds": raster.seconds,
        "buildings_per_s": n / seconds,
        "buildings_per_s_excl_read": n / max(seconds - raster.seconds, 1e-9),
        "cpu_seconds": cpu_seconds,
        "buildings_per_cpu_s": n / cpu_seconds,
        "load_avg_1min": os.getloadavg()[0],
        "peak_rss_mb": peak_rss_mb(),
        "setup_rss_mb": rss_setup,
    }


def run_roads(stem: Path, tiles: int, chunk_px: int) -> dict[str, Any]:
    from terraseg.vector.centerlines import extract_centerlines
    from terraseg.vector.vectorization import iter_roads

    with rasterio.open(f"{stem}.truth.tif") as ds:
        base, transform, crs = ds.read(1), ds.transform, ds.crs
    raster = VirtualRaster(base, tiles, relabel=False)
    wins = windows(raster.shape, chunk_px)
    t0 = time.perf_counter()
    n_regions = sum(len(b) for b in iter_roads(raster.read, wins, transform, crs))
    poly_s = time.perf_counter() - t0
    read_poly = raster.seconds
    raster.seconds = 0.0
    t0 = time.perf_counter()
    net = extract_centerlines(raster.read, wins, transform, crs)
    line_s = time.perf_counter() - t0
    km = float(net.centerlines["length_m"].sum()) / 1000
    return {
        "what": "roads",
        "tiles": tiles,
        "scene_px": list(raster.shape),
        "chunk_px": chunk_px,
        "road_regions": n_regions,
        "centerline_km": km,
        "graph_nodes": len(net.nodes),
        "polygons_seconds": poly_s,
        "polygons_read_seconds": read_poly,
        "polygons_km_per_s": km / poly_s,
        "centerlines_seconds": line_s,
        "centerlines_read_seconds": raster.seconds,
        "centerlines_km_per_s": km / line_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def child(args: argparse.Namespace) -> None:
    stem = city(args.size_px, args.seed)
    if args.child == "buildings":
        out = run_buildings(stem, args.tiles[0], args.chunk_px, not args.no_regularize)
    else:
        out = run_roads(stem, args.tiles[0], args.chunk_px)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-px", type=int, default=2048, help="base city tile (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=[3, 9],
        help="scene = tiles x tiles base cities (3: ~10k, 9: ~100k buildings)",
    )
    parser.add_argument("--chunk-px", type=int, default=2048)
    parser.add_argument("--roads-tiles", type=int, default=3, help="0: skip roads")
    parser.add_argument("--no-regularize", action="store_true")
    parser.add_argument("--child", choices=["buildings", "roads"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    city(args.size_px, args.seed)  # make the base city once, outside the measurements
    runs = [("buildings", t) for t in args.tiles]
    if args.roads_tiles:
        runs.append(("roads", args.roads_tiles))
    results = []
    for what, tiles in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            what,
            "--tiles",
            str(tiles),
            "--size-px",
            str(args.size_px),
            "--seed",
            str(args.seed),
            "--chunk-px",
            str(args.chunk_px),
        ]
        if args.no_regularize:
            cmd.append("--no-regularize")
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        if what == "buildings":
            print(
                f"buildings ({'regularized' if res['regularize'] else 'raw'}): "
                f"{res['buildings']} in {res['seconds']:.1f} s on "
                f"{res['scene_px'][0]}x{res['scene_px'][1]} px (chunk {res['chunk_px']}): "
                f"{res['buildings_per_s']:.0f}/s ({res['buildings_per_s_excl_read']:.0f}/s "
                f"without the virtual reads; {res['buildings_per_cpu_s']:.0f} per CPU-second), "
                f"peak RSS {res['peak_rss_mb']:.0f} MB"
            )
        else:
            print(
                f"roads: {res['centerline_km']:.1f} km of centerline on "
                f"{res['scene_px'][0]}x{res['scene_px'][1]} px: polygons "
                f"{res['polygons_km_per_s']:.2f} km/s, centerlines+graph "
                f"{res['centerlines_km_per_s']:.2f} km/s, peak RSS {res['peak_rss_mb']:.0f} MB"
            )
    print(json.dumps({"benchmark": "vectorize", "cpu_count": os.cpu_count(), "runs": results}))


if __name__ == "__main__":
    main()
