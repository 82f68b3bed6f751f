"""``terraseg segment``: peak memory does not grow with the scene (slic and kmeans).

For each method and scene size, one fresh Python process runs ``segment_scene``
(the same call as ``terraseg segment``: sample fit, chunk passes with halo,
global ids, COG, polygons, GeoPackage) and reports its peak RSS
(``ru_maxrss``) and the RSS after imports. The scenes are a synthetic city of
an unseen seed at ``--base-px`` and the same city tiled 4 × 4 (16 times the
pixels), so both hold the same kind of content. GDAL's block cache is capped at
64 MB in both runs (``GDAL_CACHEMAX``), as a cluster worker would set it.

Usage::

    python benchmarks/segment_memory.py                      # 2048² vs 8192²
    python benchmarks/segment_memory.py --base-px 512 --methods kmeans
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import rasterio
from rasterio.windows import Window

from terraseg.synthetic import make_city

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from terraseg.engine.segment import segment_scene
kw = json.loads(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
res = segment_scene(sys.argv[1], Path(sys.argv[2]), chunk_px=2048, overwrite=True, **kw)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": round(peak, 1), "after_imports_mb": round(base, 1),
                  "seconds": round(dt, 1), "segments": res.n_segments}))
"""

METHODS: dict[str, dict[str, Any]] = {
    "slic": {"method": "slic"},
    "kmeans": {"method": "kmeans", "k": 5},
}


def tiled(src_path: Path, out: Path, times: int) -> Path:
    """``src_path`` repeated ``times`` × ``times`` (tiled GeoTIFF, written window by window)."""
    with rasterio.open(src_path) as src:
        profile = src.profile | {
            "width": src.width * times, "height": src.height * times, "tiled": True,
            "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        }
        with rasterio.open(out, "w", **profile) as dst:
            for r in range(0, src.height, 512):
                for c in range(0, src.width, 512):
                    win = Window(c, r, min(512, src.width - c), min(512, src.height - r))
                    block = src.read(window=win)
                    for i in range(times):
                        for j in range(times):
                            dst.write(block, window=Window(c + j * src.width, r + i * src.height,
                                                           win.width, win.height))
    return out


def measure(scene: Path, out: Path, kw: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "GDAL_CACHEMAX": "64"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(scene), str(out), json.dumps(kw)],
                          capture_output=True, text=True, env=env, check=True, timeout=3600)
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-px", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name(
        "segment_memory.json"))
    args = parser.parse_args()
    out: dict[str, Any] = {"base_px": args.base_px, "large_px": 4 * args.base_px,
                           "seed": args.seed, "chunk_px": 2048, "gdal_cachemax_mb": 64,
                           "command": "python benchmarks/segment_memory.py", "methods": {}}
    with tempfile.TemporaryDirectory(prefix="terraseg-segmem-") as tmp:
        small = Path(tmp) / "city.tif"
        make_city(small, size_px=args.base_px, seed=args.seed)
        large = tiled(small, Path(tmp) / "city4x4.tif", 4)
        for name in args.methods:
            rows = {str(px): measure(scene, Path(tmp) / f"{name}{px}", METHODS[name])
                    for px, scene in ((args.base_px, small), (4 * args.base_px, large))}
            ratio = rows[str(4 * args.base_px)]["peak_mb"] / rows[str(args.base_px)]["peak_mb"]
            out["methods"][name] = {**rows, "peak_ratio": round(ratio, 3)}
            print(name, json.dumps(out["methods"][name]), flush=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
