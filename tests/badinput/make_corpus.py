"""Generate the bad-input corpus: odd and broken rasters, checkpoints, workflows, labels.

Nothing here is committed as a binary: every input is written at test time by
one function below (into ``tmp_path``), so the corpus is reviewable as code.
Each function takes a folder (and sometimes options), writes one input and
returns its path. Run ``python tests/badinput/make_corpus.py DIR`` to write the
whole corpus into ``DIR`` and look at it with ``gdalinfo``/``ogrinfo``.

Pixel content comes from :mod:`terraseg.synthetic` (a little city) so that the
models see something like imagery; grids use a real UTM CRS, a non-zero origin
and sizes no tile size divides.
"""

from __future__ import annotations

import struct
import sys
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.transform import from_origin
from rasterio.windows import Window

UTM = "EPSG:32633"
ORIGIN = (433_017.0, 4_650_029.0)
GSD_M = 0.5
SHAPE = (200, 232)
"""``(rows, cols)`` of the ordinary small scene the corpus derives its inputs from."""


# --------------------------------------------------------------------------- pixels


@cache
def city_pixels(rows: int = SHAPE[0], cols: int = SHAPE[1], seed: int = 5) -> NDArray[np.uint8]:
    """``(3, rows, cols)`` uint8 RGB of a synthetic city (rendered in memory, cached)."""
    from terraseg.core.grid import PixelWindow
    from terraseg.synthetic import CityLayout, render_window, scene_transform

    transform = scene_transform(UTM, (rows, cols), GSD_M, seed)
    layout = CityLayout.from_seed((rows, cols), seed, GSD_M, transform=transform)
    image, _, _ = render_window(layout, PixelWindow(0, 0, rows, cols), bands=3)
    image.setflags(write=False)
    return image


def utm_transform(res: float = GSD_M) -> Affine:
    return from_origin(ORIGIN[0], ORIGIN[1], res, res)


def write_raster(
    path: Path,
    array: NDArray[Any],
    *,
    crs: str | None = UTM,
    transform: Affine | None = None,
    nodata: float | None = None,
    **profile: Any,
) -> Path:
    """Write ``array`` ``(band, y, x)`` as a GeoTIFF (tiled 64² unless told otherwise)."""
    count, rows, cols = array.shape
    opts: dict[str, Any] = {"tiled": True, "blockxsize": 64, "blockysize": 64}
    opts.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", height=rows, width=cols, count=count,
            dtype=array.dtype.name, crs=crs,
            transform=transform if transform is not None else utm_transform(),
            nodata=nodata, **opts,
        ) as dst:
            dst.write(array)
    return path


def good_scene(folder: Path, name: str = "scene.tif") -> Path:
    """An ordinary, valid 3-band uint8 scene (the control input)."""
    return write_raster(folder / name, np.array(city_pixels()))


# --------------------------------------------------------------------------- broken rasters


def truncated_tiff(folder: Path) -> Path:
    """A valid tiled, compressed GeoTIFF cut to half its bytes (an interrupted download)."""
    whole = write_raster(folder / "whole.tif", np.array(city_pixels()), compress="deflate")
    data = whole.read_bytes()
    whole.unlink()
    out = folder / "truncated.tif"
    out.write_bytes(data[: len(data) // 2])
    return out


def text_named_tif(folder: Path) -> Path:
    """A text file with a .tif name (a saved HTML error page, say)."""
    out = folder / "download.tif"
    out.write_text("<html><body>403 Forbidden</body></html>\n")
    return out


def tiff_without_crs(folder: Path) -> Path:
    return write_raster(folder / "nocrs.tif", np.array(city_pixels()), crs=None)


def tiff_without_geotransform(folder: Path) -> Path:
    """No geotransform at all (identity), no CRS: a plain image renamed .tif."""
    return write_raster(
        folder / "nogeo.tif", np.array(city_pixels()), crs=None, transform=Affine.identity()
    )


def rotated_tiff(folder: Path) -> Path:
    """A rotated/sheared geotransform (as some aerial surveys deliver)."""
    t = Affine(GSD_M, 0.08, ORIGIN[0], 0.05, -GSD_M, ORIGIN[1])
    return write_raster(folder / "rotated.tif", np.array(city_pixels()), transform=t)


def zero_width_vrt(folder: Path) -> Path:
    """A 0x10 raster. GDAL refuses to *create* a 0-sized GTiff ("sizes must be larger
    than zero") and libtiff refuses to read one, so a VRT declares the 0 width."""
    out = folder / "zero_width.vrt"
    out.write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="10">\n'
        f"  <SRS>{UTM}</SRS>\n"
        f"  <GeoTransform>{ORIGIN[0]}, 0.5, 0, {ORIGIN[1]}, 0, -0.5</GeoTransform>\n"
        '  <VRTRasterBand dataType="Byte" band="1"/>\n'
        "</VRTDataset>\n"
    )
    return out


def _ifd_entries(data: bytes | bytearray) -> dict[int, tuple[int, int, int]]:
    """``{tag: (type, count, value_offset_position)}`` of the first IFD of a classic LE TIFF."""
    if data[:4] != b"II*\x00":
        raise ValueError("expected a classic little-endian TIFF")
    ifd = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, ifd)[0]
    entries = {}
    for i in range(n):
        pos = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack_from("<HHI", data, pos)
        entries[tag] = (typ, count, pos + 8)
    return entries


def _tag_values(data: bytes | bytearray, entry: tuple[int, int, int]) -> list[int]:
    typ, count, pos = entry
    fmt = {3: "H", 4: "I"}[typ]
    size = struct.calcsize(fmt) * count
    where = pos if size <= 4 else struct.unpack_from("<I", data, pos)[0]
    return list(struct.unpack_from(f"<{count}{fmt}", data, where))


def zero_height_tiff(folder: Path) -> Path:
    """A 1-row strip GeoTIFF whose ImageLength tag was patched to 0 (header hack)."""
    src = write_raster(
        folder / "one_row.tif", np.ones((1, 1, 10), np.uint8), tiled=False,
        blockxsize=None, blockysize=None,
    )
    data = bytearray(src.read_bytes())
    src.unlink()
    typ, _, pos = _ifd_entries(data)[257]  # ImageLength
    struct.pack_into("<H" if typ == 3 else "<I", data, pos, 0)
    out = folder / "zero_height.tif"
    out.write_bytes(bytes(data))
    return out


def corrupt_middle_block(folder: Path) -> Path:
    """A 1024² scene whose first and last tiles are fine but one middle tile is garbage.

    The open-time sanity read (first and last block) passes; the damage shows
    only when the chunk that covers the middle tile is read, mid-run.
    """
    rows = cols = 1024
    img = np.tile(np.array(city_pixels()), (1, 6, 5))[:, :rows, :cols]
    src = write_raster(
        folder / "corrupt_middle.tif", np.ascontiguousarray(img), compress="deflate",
        blockxsize=256, blockysize=256,
    )
    data = bytearray(src.read_bytes())
    entries = _ifd_entries(data)
    offsets = _tag_values(data, entries[324])  # TileOffsets
    counts = _tag_values(data, entries[325])  # TileByteCounts
    k = len(offsets) // 2 + 1
    data[offsets[k] : offsets[k] + counts[k]] = b"\xff" * counts[k]
    src.write_bytes(bytes(data))
    return src


# --------------------------------------------------------------------------- odd but valid rasters


def one_by_one(folder: Path) -> Path:
    return write_raster(folder / "one_pixel.tif", np.array(city_pixels())[:, :1, :1])


def band_count(folder: Path, n: int) -> Path:
    img = np.array(city_pixels())
    return write_raster(folder / f"{n}band.tif", img[np.arange(n) % 3])


def float_with_nan(folder: Path) -> tuple[Path, NDArray[np.bool_]]:
    """float32 scene (reflectance-like) with NaN holes; returns the path and the NaN mask."""
    img = np.array(city_pixels()).astype(np.float32)
    nan = np.zeros(img.shape[1:], bool)
    nan[40:90, 60:140] = True
    nan[150:, :30] = True
    img[1][nan] = np.nan  # one band is enough to invalidate a pixel
    return write_raster(folder / "float_nan.tif", img), nan


def all_nodata(folder: Path) -> Path:
    return write_raster(folder / "all_nodata.tif", np.zeros((3, *SHAPE), np.uint8), nodata=0)


def partial_nodata(folder: Path) -> tuple[Path, NDArray[np.bool_]]:
    """A scene whose left 40 % (a swath edge) and a diagonal corner are nodata (0)."""
    img = np.array(city_pixels())
    img = np.where(img == 0, 1, img).astype(np.uint8)  # no accidental nodata in the image
    rows, cols = np.indices(SHAPE)
    hole = (cols < int(SHAPE[1] * 0.4)) | (rows + cols > SHAPE[0] + SHAPE[1] - 60)
    img[:, hole] = 0
    return write_raster(folder / "partial_nodata.tif", img, nodata=0), hole


def alpha_band(folder: Path) -> tuple[Path, NDArray[np.bool_]]:
    """RGBA with an alpha band (colour interpretation alpha); returns where alpha is 0."""
    img = np.array(city_pixels())
    alpha = np.full(SHAPE, 255, np.uint8)
    transparent = np.zeros(SHAPE, bool)
    transparent[:70, :] = True
    alpha[transparent] = 0
    rgba = np.concatenate([img, alpha[None]])
    path = write_raster(folder / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    return path, transparent


def antimeridian(folder: Path) -> Path:
    """EPSG:4326 scene straddling the antimeridian (lon 179.9995..180.0006) at 16°S.

    Pixels are about 0.5 m square on the ground; the right edge has longitudes
    above 180°, which is what GDAL writes for such scenes.
    """
    rows, cols = SHAPE
    lat = -16.0
    res_x = GSD_M / (111_412.84 * np.cos(np.radians(lat)))
    res_y = GSD_M / 110_574.0
    left = 180.0 - cols / 2 * res_x
    t = Affine(res_x, 0.0, left, 0.0, -res_y, lat + rows / 2 * res_y)
    return write_raster(folder / "fiji.tif", np.array(city_pixels()), crs="EPSG:4326", transform=t)


def huge_sparse(folder: Path, size_px: int = 200_000) -> Path:
    """A 200000×200000 (40 Gpx) tiled GeoTIFF holding ONE written block (~2 MB on disk).

    ``SPARSE_OK=TRUE`` leaves unwritten tiles out of the file; they read as 0.
    """
    path = folder / "huge_sparse.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=size_px, width=size_px, count=3, dtype="uint8",
        crs=UTM, transform=utm_transform(), tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", SPARSE_OK="TRUE", BIGTIFF="YES",
    ) as dst:
        block = np.tile(np.array(city_pixels()), (1, 3, 3))[:, :512, :512]
        dst.write(np.ascontiguousarray(block), window=Window(0, 0, 512, 512))
    return path


def medium_scene(folder: Path, size_px: int = 3000) -> Path:
    """A scene that takes the CPU a few seconds (for the interrupted-write case)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, size_px, size_px), dtype=np.uint8)
    return write_raster(folder / "medium.tif", img, blockxsize=512, blockysize=512)


# --------------------------------------------------------------------------- previous outputs


def previous_outputs(out_dir: Path) -> list[Path]:
    """A finished earlier run in ``out_dir`` (classes.tif, its sidecar, run.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = write_raster(out_dir / "classes.tif", np.ones((1, 40, 50), np.uint8))
    aux = out_dir / "classes.tif.aux.xml"
    aux.write_text("<PAMDataset/>\n")
    run_json = out_dir / "run.json"
    run_json.write_text('{"previous": true}\n')
    return [classes, aux, run_json]


# --------------------------------------------------------------------------- checkpoints

SMALL_ARCH: dict[str, Any] = {
    "library": "smp",
    "name": "Unet",
    "kwargs": {
        "encoder_name": "tu-resnet10t",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
        "in_channels": 3,
        "classes": 3,
    },
}


def small_model(folder: Path, name: str = "model") -> tuple[Path, Path]:
    """A valid small smp U-Net: ``<name>.safetensors`` and ``<name>.card.yaml``."""
    import torch

    from terraseg.models import ModelCard, build_network, save_model

    card = ModelCard.model_validate({"name": name, "architecture": SMALL_ARCH, "gsd_m": GSD_M})
    torch.manual_seed(0)
    return save_model(build_network(card.architecture).eval(), card, folder / name)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the code a checkpoint must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def pickled_code_checkpoint(folder: Path, marker: Path) -> Path:
    """A torch.save zip whose pickle calls ``open(marker, "w")`` when loaded unsafely.

    A valid card lies beside it, so only the pickle itself can make it fail.
    """
    import torch

    from terraseg.models import save_card
    from terraseg.models.card import ModelCard, card_path_for

    path = folder / "evil.pt"
    torch.save({"encoder.weight": torch.zeros(3), "hook": _Payload(marker)}, path)
    card = ModelCard.model_validate({"name": "evil", "architecture": SMALL_ARCH})
    save_card(card, card_path_for(path))
    return path


def truncated_checkpoint(folder: Path) -> Path:
    """A safetensors file cut in half, with a card beside it that has no checksum."""
    import yaml

    weights, card = small_model(folder, "cut")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    meta = yaml.safe_load(card.read_text())
    meta.pop("weights_sha256", None)  # so the corruption itself is what gets reported
    card.write_text(yaml.safe_dump(meta, sort_keys=False))
    return weights


def wrong_classes_checkpoint(folder: Path) -> Path:
    """3-class weights whose card (self-consistent) lists only 2 classes."""
    import yaml

    weights, card = small_model(folder, "wrongcard")
    meta = yaml.safe_load(card.read_text())
    meta["classes"] = meta["classes"][:2]
    meta["architecture"]["kwargs"]["classes"] = 2
    card.write_text(yaml.safe_dump(meta, sort_keys=False))
    return weights


# --------------------------------------------------------------------------- workflows


def workflow(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def unknown_key_workflow(folder: Path, scene: Path) -> Path:
    return workflow(folder, "typo.yaml", (
        "version: 1\n"
        f"inputs: {{paths: ['{scene.name}']}}\n"
        "models: {semantic: cheap}\n"
        "tiling: {tile_size: 256}\n"  # tile_px, misspelt
        "outputs: {dir: out}\n"
    ))


def python_tag_workflow(folder: Path, marker: Path) -> Path:
    return workflow(folder, "evil.yaml", (
        "version: 1\n"
        f"name: !!python/object/apply:os.system ['touch {marker}']\n"
        "inputs: {paths: [scene.tif]}\n"
        "outputs: {dir: out}\n"
    ))


def tls_without_certs_workflow(folder: Path) -> Path:
    return workflow(folder, "tls.yaml", (
        "version: 1\n"
        "inputs: {paths: [scene.tif]}\n"
        "cluster: {type: address, address: 'tls://127.0.0.1:8786'}\n"
    ))


def future_version_workflow(folder: Path) -> Path:
    return workflow(folder, "future.yaml", "version: 7\ninputs: {paths: [scene.tif]}\n")


def missing_scene_workflow(folder: Path) -> Path:
    return workflow(folder, "missing.yaml", (
        "version: 1\ninputs: {paths: ['gone.tif']}\nmodels: {semantic: cheap}\n"
    ))


# --------------------------------------------------------------------------- labels


def _scene_bounds(scene: Path) -> tuple[float, float, float, float]:
    with rasterio.open(scene) as src:
        return tuple(src.bounds)  # type: ignore[return-value]


def _labels_frame(scene: Path, crs: str = UTM) -> dict[str, Any]:
    """Two buildings and one road inside ``scene``, as GeoDataFrames in ``crs``."""
    import geopandas as gpd
    import shapely

    left, bottom, right, top = _scene_bounds(scene)
    x, y = left + 10, top - 10
    buildings = [shapely.box(x, y - 12, x + 15, y), shapely.box(x + 30, y - 30, x + 45, y - 18)]
    roads = [shapely.box(left, bottom + 20, right, bottom + 26)]
    out = {
        "buildings": gpd.GeoDataFrame(geometry=buildings, crs=UTM),
        "roads": gpd.GeoDataFrame(geometry=roads, crs=UTM),
    }
    return {k: v.to_crs(crs) for k, v in out.items()}


def labels_gpkg(folder: Path, scene: Path, name: str = "labels.gpkg", crs: str = UTM) -> Path:
    path = folder / name
    for layer, frame in _labels_frame(scene, crs).items():
        frame.to_file(path, layer=layer)
    return path


def invalid_polygon_labels(folder: Path, scene: Path) -> Path:
    """Labels with a bow-tie, a spike and an empty polygon among valid ones."""
    import geopandas as gpd
    import shapely

    frames = _labels_frame(scene)
    left, _, _, top = _scene_bounds(scene)
    x, y = left + 60, top - 50
    bowtie = shapely.Polygon([(x, y), (x + 10, y - 10), (x + 10, y), (x, y - 10)])
    spike = shapely.Polygon(
        [(x + 20, y), (x + 30, y), (x + 30, y - 10), (x + 20, y - 10), (x + 20, y), (x + 40, y)]
    )
    b = frames["buildings"]
    frames["buildings"] = gpd.GeoDataFrame(
        geometry=[*b.geometry, bowtie, spike, shapely.Polygon()], crs=b.crs
    )
    path = folder / "invalid_labels.gpkg"
    for layer, frame in frames.items():
        frame.to_file(path, layer=layer)
    return path


def empty_label_file(folder: Path) -> Path:
    """A 0-byte .gpkg (an export that never ran)."""
    path = folder / "empty.gpkg"
    path.write_bytes(b"")
    return path


def featureless_labels(folder: Path) -> Path:
    """A valid GeoPackage with layers 'roads' and 'buildings' but no features."""
    import geopandas as gpd

    path = folder / "no_features.gpkg"
    for layer in ("roads", "buildings"):
        gpd.GeoDataFrame(geometry=[], crs=UTM).to_file(path, layer=layer)
    return path


def labels_without_crs(folder: Path, scene: Path) -> Path:
    """A shapefile without its ``.prj``: geometries but no CRS."""
    import geopandas as gpd
    import shapely

    left, _, _, top = _scene_bounds(scene)
    poly = shapely.box(left + 5, top - 20, left + 20, top - 5)
    path = folder / "nocrs.shp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided": the point
        gpd.GeoDataFrame(geometry=[poly], crs=None).to_file(path)
    return path


# --------------------------------------------------------------------------- script


ALL: dict[str, Callable[[Path], Any]] = {
    "scene": good_scene,
    "truncated": truncated_tiff,
    "text_named_tif": text_named_tif,
    "no_crs": tiff_without_crs,
    "no_geotransform": tiff_without_geotransform,
    "rotated": rotated_tiff,
    "zero_width": zero_width_vrt,
    "zero_height": zero_height_tiff,
    "corrupt_middle": corrupt_middle_block,
    "one_by_one": one_by_one,
    "two_bands": lambda d: band_count(d, 2),
    "float_nan": float_with_nan,
    "all_nodata": all_nodata,
    "partial_nodata": partial_nodata,
    "alpha": alpha_band,
    "antimeridian": antimeridian,
    "huge_sparse": huge_sparse,
    "evil_checkpoint": lambda d: pickled_code_checkpoint(d, d / "PWNED"),
    "truncated_checkpoint": truncated_checkpoint,
    "wrong_classes": wrong_classes_checkpoint,
    "typo_workflow": lambda d: unknown_key_workflow(d, d / "scene.tif"),
    "tag_workflow": lambda d: python_tag_workflow(d, d / "PWNED"),
    "invalid_labels": lambda d: invalid_polygon_labels(d, good_scene(d)),
    "empty_labels": empty_label_file,
    "featureless_labels": featureless_labels,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tests/badinput/make_corpus.py DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in ALL.items():
        result = make(folder)
        print(f"{name}: {result[0] if isinstance(result, tuple) else result}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
