"""``terraseg segment``: speed of each method, SLIC quality against the truth, chunk invariance.

On a synthetic city of an unseen seed, for each method: seconds and Mpx/s of
the whole ``segment_scene`` call (sample fit, chunk passes, COG, polygons,
GeoPackage). For the region methods (slic, watershed, felzenszwalb) also, against the truth
building instances:

- boundary recall: the share of truth building-outline pixels (building
  pixels with a 4-neighbour of another id) that have a segment boundary pixel
  within ``--tolerance-px`` (Chebyshev distance);
- undersegmentation error (Neubert & Protzel): for each truth building ``g``
  and each segment ``s`` that overlaps it, ``min(|s & g|, |s - g|)``, summed
  and divided by the scene's pixel count;
- the number of segments at ``--chunk-px`` and at the scene size (one chunk).

The quality figures read the truth and segment rasters whole, so keep
``--size-px`` at 2048 or below (the pipeline itself never does).

Usage::

    python benchmarks/segment.py --size-px 2048 --seed 21
    python benchmarks/segment.py --size-px 1024 --compactness 5 10 20 --methods slic
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from scipy import ndimage

from terraseg.engine.segment import segment_scene
from terraseg.synthetic import make_city

RUNS: dict[str, dict[str, Any]] = {
    "threshold": {"method": "threshold", "band": 1},
    "index": {"method": "index", "index": "exg"},
    "kmeans": {"method": "kmeans", "k": 5},
    "slic": {"method": "slic"},
    "watershed": {"method": "watershed"},
    "felzenszwalb": {"method": "felzenszwalb"},
    "canny": {"method": "canny"},
}


def boundaries(labels: NDArray[Any]) -> NDArray[np.bool_]:
    """Pixels with a 4-neighbour of another label."""
    b = np.zeros(labels.shape, bool)
    dr = labels[1:] != labels[:-1]
    dc = labels[:, 1:] != labels[:, :-1]
    b[1:] |= dr
    b[:-1] |= dr
    b[:, 1:] |= dc
    b[:, :-1] |= dc
    return b


def boundary_recall(segments: NDArray[Any], truth: NDArray[Any], tolerance_px: int) -> float:
    """Share of truth building-outline pixels with a segment boundary within the tolerance."""
    outline = boundaries(truth) & (truth > 0)
    near = ndimage.binary_dilation(boundaries(segments),
                                   structure=np.ones((3, 3), bool), iterations=tolerance_px)
    return float((outline & near).sum() / max(int(outline.sum()), 1))


def undersegmentation_error(segments: NDArray[Any], truth: NDArray[Any]) -> float:
    """Neubert & Protzel's undersegmentation error over the truth buildings."""
    seg = segments.astype(np.int64).ravel()
    gt = truth.astype(np.int64).ravel()
    size = np.bincount(seg)
    inside = gt > 0
    pair, both = np.unique(seg[inside] * (int(gt.max()) + 1) + gt[inside], return_counts=True)
    s = pair // (int(gt.max()) + 1)
    leak = np.minimum(both, size[s] - both)
    return float(leak.sum() / seg.size)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"size_px": args.size_px, "seed": args.seed, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        city = make_city(Path(tmp) / "city.tif", size_px=args.size_px, seed=args.seed)
        mpx = args.size_px**2 / 1e6
        with rasterio.open(city.truth_instances) as ds:
            truth = ds.read(1)
        for name in args.methods:
            variants = args.compactness if name == "slic" else [None]
            regions = name in ("slic", "watershed", "felzenszwalb")
            for comp in variants:
                kw = dict(RUNS[name])
                if comp is not None:
                    kw["compactness"] = comp
                label = name if comp is None else f"{name} compactness {comp:g}"
                t0 = time.perf_counter()
                res = segment_scene(city.image, Path(tmp) / label.replace(" ", "_"),
                                    chunk_px=args.chunk_px, **kw)
                dt = time.perf_counter() - t0
                row: dict[str, Any] = {"seconds": round(dt, 2), "mpx_per_s": round(mpx / dt, 3),
                                       "segments": res.n_segments}
                if regions:
                    with rasterio.open(res.raster) as ds:
                        seg = ds.read(1)
                    row["boundary_recall"] = round(
                        boundary_recall(seg, truth, args.tolerance_px), 4)
                    row["undersegmentation_error"] = round(undersegmentation_error(seg, truth), 4)
                    row["mean_area_m2"] = round(float(res.read_segments()["area_m2"].mean()), 1)
                    one = segment_scene(city.image, Path(tmp) / (label + "_one"),
                                        chunk_px=args.size_px, **kw)
                    row["segments_one_chunk"] = one.n_segments
                out["methods"][label] = row
                print(label, json.dumps(row), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-px", type=int, default=2048)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--chunk-px", type=int, default=512)
    p.add_argument("--tolerance-px", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--compactness", type=float, nargs="+", default=[10.0])
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    args = p.parse_args()
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
