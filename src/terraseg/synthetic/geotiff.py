"""GeoTIFF layout shared by the synthetic writers: block size, profile and windows."""

from __future__ import annotations

from collections.abc import Iterator

from affine import Affine

from terraseg.core.grid import PixelWindow

__all__ = ["BLOCK_PX", "geotiff_profile", "pixel_windows"]

BLOCK_PX = 512
"""Tile size (pixels) of every GeoTIFF the synthetic writers produce."""


def geotiff_profile(
    shape: tuple[int, int], count: int, dtype: str, crs: str, transform: Affine
) -> dict[str, object]:
    """A rasterio profile: tiled ``BLOCK_PX`` GeoTIFF, deflate, pixel-interleaved."""
    return {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": BLOCK_PX,
        "blockysize": BLOCK_PX,
        "compress": "deflate",
        "zlevel": 6,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def pixel_windows(shape: tuple[int, int], window_px: int) -> Iterator[PixelWindow]:
    """Windows of ``window_px`` covering ``shape`` row-major (clipped at the edges).

    Examples
    --------
    >>> [w.shape for w in pixel_windows((3, 5), 4)]
    [(3, 4), (3, 1)]
    """
    rows, cols = shape
    for r in range(0, rows, window_px):
        for c in range(0, cols, window_px):
            yield PixelWindow(r, c, min(window_px, rows - r), min(window_px, cols - c))
