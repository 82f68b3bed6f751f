"""Label extents: the area of a partly labelled image that was labelled.

Outside the polygon(s) of an extent file, a missing building label means
"not looked at", not "no building", so those pixels become
:data:`~terraseg.models.spec.IGNORE_LABEL` in the class raster and count in
no loss and no validation metric. The extent may be in any CRS; it is
reprojected to the labels' CRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from terraseg.errors import ConfigError
from terraseg.models.spec import IGNORE_LABEL

if TYPE_CHECKING:
    import shapely
    from pyproj import CRS

__all__ = ["extent_paths", "mask_outside_extent", "read_extent"]


def extent_paths(
    label_extent: str | Sequence[str] | None, n_images: int, tag: str = "train"
) -> list[Path | None]:
    """One extent file (or ``None``) per image (``tag`` train or val): one for all, or one each.

    Raises
    ------
    ConfigError
        As many files as neither 1 nor the number of images.

    Examples
    --------
    >>> extent_paths("a.geojson", 2)
    [PosixPath('a.geojson'), PosixPath('a.geojson')]
    >>> extent_paths(None, 1)
    [None]
    """
    if label_extent is None:
        return [None] * n_images
    files = [label_extent] if isinstance(label_extent, str) else list(label_extent)
    if len(files) == 1:
        return [Path(files[0])] * n_images
    if len(files) != n_images:
        raise ConfigError(
            f"{'label_extent' if tag == 'train' else 'val_label_extent'} lists {len(files)} "
            f"files for {n_images} {'training' if tag == 'train' else 'validation'} image(s); "
            "give one for all images or one per image, in the same order",
        )
    return [Path(f) for f in files]


def read_extent(path: Path, crs: CRS) -> shapely.Geometry:
    """The union of the polygons of a vector file, in ``crs``.

    Raises
    ------
    ConfigError
        Missing or unreadable file, no CRS, or no polygon in it.
    """
    import geopandas as gpd
    import shapely

    if not path.exists():
        raise ConfigError(f"label extent '{path}' does not exist; check the path", path=path)
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise ConfigError(
            f"cannot read label extent '{path}': {exc}; give a GeoJSON/GeoPackage of polygons",
            path=path,
        ) from None
    if gdf.crs is None:
        raise ConfigError(
            f"label extent '{path}' has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)",
            path=path,
        )
    geoms = np.asarray(gdf.to_crs(crs).geometry.values, dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    polygons = [g for g in shapely.make_valid(geoms) if g.area > 0]
    if not polygons:
        raise ConfigError(
            f"label extent '{path}' holds no polygon; give the labelled area as polygon(s)",
            path=path,
        )
    return shapely.union_all(polygons)


def mask_outside_extent(
    labels: Path, extent: Path, out: Path, *, block_rows: int = 1024
) -> tuple[Path, shapely.Geometry]:
    """Copy a class raster with every pixel outside ``extent`` set to ``IGNORE_LABEL``.

    A pixel is inside when its centre is in the extent's polygon(s).

    Parameters
    ----------
    labels
        One-band uint8 class raster.
    extent
        Vector file of the labelled area (any CRS).
    out
        Output GeoTIFF on the same grid (tiled, LZW).
    block_rows
        Rows processed at a time.

    Returns
    -------
    tuple
        ``out`` and the extent polygon in the raster's CRS.

    Raises
    ------
    ConfigError
        The extent cannot be read or does not overlap the labels.
    """
    import rasterio
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.windows import Window

    with rasterio.open(labels) as src:
        area = read_extent(extent, src.crs)
        bounds = shapely.box(*src.bounds)
        if not area.intersects(bounds):
            raise ConfigError(
                f"label extent '{extent}' does not overlap the labels of '{labels.name}' "
                f"(extent bounds {[round(v, 1) for v in area.bounds]}, raster bounds "
                f"{[round(v, 1) for v in src.bounds]} in {src.crs.to_string()}); give the "
                "extent of this image",
                path=extent,
            )
        profile = {
            **src.profile,
            "driver": "GTiff",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "lzw",
        }
        with rasterio.open(out, "w", **profile) as dst:
            for r0 in range(0, src.height, block_rows):
                win = Window(0, r0, src.width, min(block_rows, src.height - r0))
                block = src.read(1, window=win)
                outside = geometry_mask(
                    [area], out_shape=block.shape, transform=src.window_transform(win)
                )
                block[outside] = IGNORE_LABEL
                dst.write(block, 1, window=win)
    return out, area
