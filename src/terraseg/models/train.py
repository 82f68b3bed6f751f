"""Train a semantic segmentation model on GeoTIFFs and vector (or raster) labels with torchgeo.

The path: vector labels are rasterized onto each image's grid, block by
block, into a temporary class raster (later layers are burned over earlier
ones: roads, then buildings, as the synthetic truth does); torchgeo's
``RasterDataset`` reads image and labels, ``IntersectionDataset`` pairs them,
``RandomGeoSampler`` draws training patches and ``GridGeoSampler`` tiles a
held-out area (the southern strip of each image, or separate validation
scenes); torchgeo's ``SemanticSegmentationTask`` trains under a Lightning
``Trainer`` with the card's small smp architecture. The weights and card go to
``<out>.safetensors`` and ``<out>.card.yaml`` atomically, with per-class IoU on
the held-out area in the card's ``metrics``.

Everything runs on the CPU unless ``accelerator`` says otherwise; nothing is
downloaded (encoders are built with random weights).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from terraseg.errors import BandError, ConfigError, OutputExistsError
from terraseg.io.scene import Scene, open_scene
from terraseg.models.card import (
    CARD_SUFFIX,
    Architecture,
    ModelCard,
    TrainingInfo,
    _one_line,
    load_card,
)
from terraseg.models.loading import build_network, save_model
from terraseg.models.spec import DEFAULT_CLASSES, ClassInfo, InputSpec

__all__ = [
    "DEMO_ARCHITECTURE",
    "LabelWarning",
    "rasterize_labels",
    "train_semantic",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

DEMO_ARCHITECTURE: dict[str, Any] = {
    "library": "smp",
    "name": "Unet",
    "kwargs": {
        "encoder_name": "tu-resnet10t",
        "encoder_depth": 4,
        "decoder_channels": [64, 32, 16, 16],
    },
}
"""A small U-Net (1.6 M parameters, 3.2 MB in fp16): timm ResNet-10-T, 4 stages (stride 16)."""

DEFAULT_LAYERS: dict[str, int] = {"roads": 2, "buildings": 1}
_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


class LabelWarning(UserWarning):
    """Label geometries were repaired or skipped (the message gives the count)."""


# --------------------------------------------------------------------------- labels


def _read_layers(labels: Path, layers: Mapping[str, int], scene: Scene) -> list[tuple[Any, int]]:
    """Label geometries in the scene CRS, in burn order, repaired where invalid."""
    import geopandas as gpd
    import pyogrio
    import shapely

    try:
        available = [str(row[0]) for row in pyogrio.list_layers(labels)]
    except Exception as exc:
        raise ConfigError(
            f"cannot read labels '{labels}': {exc}; give a GeoPackage/shapefile/GeoJSON or a "
            "class raster",
            path=labels,
        ) from None
    missing = [name for name in layers if name not in available]
    if missing and len(available) == 1 and len(layers) == 1:
        missing = []  # single-layer file (shapefile, GeoJSON): use its only layer
    if missing:
        raise ConfigError(
            f"labels '{labels}' have no layer(s) {missing}; its layers are {available}: "
            "choose layers with --layer NAME=CLASS",
            path=labels,
            layers=available,
        )
    shapes: list[tuple[Any, int]] = []
    n_invalid = n_empty = 0
    for name, value in layers.items():
        layer = name if name in available else available[0]
        gdf = gpd.read_file(labels, layer=layer)
        if gdf.crs is None:
            raise ConfigError(
                f"labels '{labels}' layer '{layer}' have no CRS; set one (e.g. with ogr2ogr "
                "-a_srs) to match the image",
                path=labels,
            )
        if gdf.crs != scene.crs:
            gdf = gdf.to_crs(scene.crs)
        geoms = np.asarray(gdf.geometry.values, dtype=object)
        empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        n_empty += int(empty.sum())
        geoms = geoms[~empty]
        invalid = ~shapely.is_valid(geoms)
        if invalid.any():
            n_invalid += int(invalid.sum())
            geoms[invalid] = shapely.make_valid(geoms[invalid])
        shapes.extend((g, int(value)) for g in geoms)
    if n_invalid:
        warnings.warn(
            f"labels '{labels}': repaired {n_invalid} invalid geometr"
            f"{'y' if n_invalid == 1 else 'ies'} with shapely.make_valid",
            LabelWarning,
            stacklevel=3,
        )
    if n_empty:
        warnings.warn(
            f"labels '{labels}': skipped {n_empty} empty or missing geometr"
            f"{'y' if n_empty == 1 else 'ies'}",
            LabelWarning,
            stacklevel=3,
        )
    return shapes


def rasterize_labels(
    labels: PathLike,
    image: PathLike | Scene,
    out: PathLike,
    *,
    layers: Mapping[str, int] | None = None,
    block_rows: int = 1024,
) -> Path:
    """Rasterize vector labels onto an image's grid as a uint8 class GeoTIFF.

    Parameters
    ----------
    labels
        A vector file (GeoPackage with one layer per class, shapefile, GeoJSON).
    image
        The image whose grid (CRS, transform, shape) the classes are burned on.
    out
        Output GeoTIFF (tiled, LZW), 0 where no label falls.
    layers
        Layer name → class value, burned in this order (later over earlier).
        Default ``{"roads": 2, "buildings": 1}``.
    block_rows
        Rows rasterized at a time; memory is ``block_rows × width`` bytes.

    Raises
    ------
    ConfigError
        Unreadable labels, missing layers, no CRS, or no overlap with the image.

    Warns
    -----
    LabelWarning
        When invalid geometries were repaired (``shapely.make_valid``) or empty
        ones skipped; the message gives the count.
    """
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window

    scene = image if isinstance(image, Scene) else open_scene(image)
    src = Path(labels)
    shapes = _read_layers(src, layers or DEFAULT_LAYERS, scene)
    geoms = np.asarray([g for g, _ in shapes], dtype=object)
    values = np.asarray([v for _, v in shapes], dtype=np.uint8)
    left, bottom, right, top = scene.bounds
    if not len(geoms):
        raise ConfigError(
            f"labels '{src}' hold no geometries in layer(s) "
            f"{', '.join(layers or DEFAULT_LAYERS)}; give labels with features",
            path=src,
        )
    if len(geoms):
        tree = shapely.STRtree(geoms)
        hits = tree.query(shapely.box(left, bottom, right, top), predicate="intersects")
    else:
        tree, hits = None, np.empty(0, np.intp)
    if hits.size == 0:
        extent = shapely.total_bounds(geoms) if len(geoms) else None
        raise ConfigError(
            f"labels '{src}' do not overlap image '{scene.path}' (labels bounds "
            f"{None if extent is None else [round(float(v), 1) for v in extent]}, image bounds "
            f"{[round(v, 1) for v in (left, bottom, right, top)]} in {scene.crs.to_string()}); "
            "give labels for the same area",
            path=src,
        )
    rows, cols = scene.shape
    profile = {
        "driver": "GTiff", "width": cols, "height": rows, "count": 1, "dtype": "uint8",
        "crs": scene.crs, "transform": scene.transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "lzw",
    }
    with rasterio.open(out, "w", **profile) as dst:
        for r0 in range(0, rows, block_rows):
            h = min(block_rows, rows - r0)
            win = Window(0, r0, cols, h)
            wt = rasterio.windows.transform(win, scene.transform)
            block = np.zeros((h, cols), np.uint8)
            b_left, b_bottom, b_right, b_top = rasterio.windows.bounds(win, scene.transform)
            assert tree is not None
            idx = np.sort(tree.query(shapely.box(b_left, b_bottom, b_right, b_top)))
            if idx.size:
                rasterize(
                    zip(geoms[idx], values[idx].tolist(), strict=True),
                    out=block, transform=wt, all_touched=False,
                )
            dst.write(block, 1, window=win)
    return Path(out)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class _Pair:
    image: Scene
    labels: Path  # class raster on (or warpable to) the image grid


def _raster_classes() -> tuple[type[Any], type[Any]]:
    from torchgeo.datasets import RasterDataset

    class ImageRaster(RasterDataset):
        filename_glob = "*"
        is_image = True

    class LabelRaster(RasterDataset):
        filename_glob = "*"
        is_image = False

    return ImageRaster, LabelRaster


def _boxes(scene: Scene, val_fraction: float, patch_px: int) -> tuple[Any, Any]:
    """Training area (north) and held-out validation area (south, whole patches) of a scene."""
    import shapely

    rows, cols = scene.shape
    res_x, res_y = scene.res
    left, bottom, right, top = scene.bounds
    val_rows = max(patch_px, int(round(rows * val_fraction / patch_px)) * patch_px)
    val_cols = (cols // patch_px) * patch_px
    if rows - val_rows < patch_px or val_cols < patch_px:
        raise ConfigError(
            f"image '{scene.path}' ({rows}x{cols} px) is too small to hold out "
            f"{val_rows} rows for validation and train on {patch_px}-px patches; use a larger "
            "image, a smaller --patch-px, or separate validation scenes",
            path=scene.path,
        )
    split_y = bottom + val_rows * res_y
    train = shapely.box(left, split_y, right, top)
    val = shapely.box(left, bottom, left + val_cols * res_x, split_y)
    return train, val


def _whole_box(scene: Scene, patch_px: int) -> Any:
    import shapely

    rows, cols = scene.shape
    res_x, res_y = scene.res
    left, _, _, top = scene.bounds
    h = (rows // patch_px) * patch_px
    w = (cols // patch_px) * patch_px
    if h == 0 or w == 0:
        raise ConfigError(
            f"validation image '{scene.path}' ({rows}x{cols} px) is smaller than one "
            f"{patch_px}-px patch; use a smaller --patch-px",
            path=scene.path,
        )
    return shapely.box(left, top - h * res_y, left + w * res_x, top)


class _Scenes(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Several torchgeo ``IntersectionDataset`` s indexed by ``(scene, query)``.

    Scenes are kept apart (not merged into one index) because independent
    scenes, synthetic ones in particular, may share coordinates. Samples are
    band-selected, scaled and (for training) flipped/rotated.
    """

    def __init__(
        self, datasets: Sequence[Any], input_spec: InputSpec, *, augment: bool, seed: int
    ) -> None:
        self.datasets = list(datasets)
        self.band_index = [b - 1 for b in input_spec.bands]
        self.input_spec = input_spec
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:  # only reached through the samplers
        return 0

    def __getitem__(self, item: tuple[int, Any]) -> dict[str, torch.Tensor]:
        i, query = item
        sample = self.datasets[i][query]
        x = sample["image"][self.band_index].float()
        spec = self.input_spec
        if spec.normalization == "meanstd" and spec.mean is not None and spec.std is not None:
            mean = torch.tensor(spec.mean).view(-1, 1, 1)
            std = torch.tensor(spec.std).view(-1, 1, 1)
            x = (x - mean) / std
        else:
            x = x / float(spec.scale)
        y = sample["mask"].long()
        if self.augment:
            k = int(self.rng.integers(4))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if self.rng.random() < 0.5:
                x, y = torch.flip(x, (2,)), torch.flip(y, (1,))
            gain = float(self.rng.uniform(0.9, 1.1))
            x = x * gain
        return {"image": x.contiguous(), "mask": y.contiguous()}


class _ChainSampler(torch.utils.data.Sampler[tuple[int, Any]]):
    """Yields ``(scene, query)`` from one torchgeo sampler per scene, shuffled or in order."""

    def __init__(self, samplers: Sequence[Any], *, shuffle: bool, seed: int) -> None:
        self.samplers = list(samplers)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        items = [(i, q) for i, s in enumerate(self.samplers) for q in s]
        if self.shuffle:
            order = torch.randperm(len(items), generator=self.generator).tolist()
            items = [items[j] for j in order]
        return iter(items)


# --------------------------------------------------------------------------- task


def _task_class() -> type[Any]:
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import OneCycleLR
    from torchgeo.trainers import SemanticSegmentationTask

    class TerrasegSegmentationTask(SemanticSegmentationTask):
        """torchgeo's task with the card's architecture and a one-cycle schedule."""

        def __init__(
            self, *, terraseg_card: dict[str, Any], total_steps: int, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)  # saves terraseg_card/total_steps as hyper-parameters

        def configure_models(self) -> None:
            arch = Architecture.model_validate(self.hparams["terraseg_card"]["architecture"])
            self.model = build_network(arch, source="the training architecture")

        def configure_optimizers(self) -> Any:
            optimizer = AdamW(self.parameters(), lr=self.hparams["lr"], weight_decay=1e-4)
            total = max(int(self.hparams["total_steps"]), 1)
            scheduler = OneCycleLR(
                optimizer, max_lr=self.hparams["lr"], total_steps=total, pct_start=0.15
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }

    return TerrasegSegmentationTask


def _confusion(
    net: torch.nn.Module, loader: Any, n_classes: int, ignore: int | None
) -> np.ndarray:
    cm = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    net.eval()
    with torch.inference_mode():
        for batch in loader:
            pred = net(batch["image"]).argmax(1).flatten()
            true = batch["mask"].flatten()
            keep = (true >= 0) & (true < n_classes)
            if ignore is not None:
                keep &= true != ignore
            cm += torch.bincount(
                true[keep] * n_classes + pred[keep], minlength=n_classes * n_classes
            ).view(n_classes, n_classes)
    return cm.numpy()


def _iou_metrics(cm: np.ndarray, classes: Sequence[ClassInfo], prefix: str) -> dict[str, float]:
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    out: dict[str, float] = {}
    ious = []
    for c in classes:
        denom = tp[c.id] + fp[c.id] + fn[c.id]
        iou = float(tp[c.id] / denom) if denom > 0 else float("nan")
        out[f"{prefix}iou_{c.name}"] = round(iou, 4)
        ious.append(iou)
    out[f"{prefix}miou"] = round(float(np.nanmean(ious)), 4)
    out[f"{prefix}pixel_accuracy"] = round(float(tp.sum() / max(cm.sum(), 1)), 4)
    return out


# --------------------------------------------------------------------------- public


def _as_list(value: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    return [Path(v) for v in value]


def _out_paths(out: PathLike) -> tuple[Path, Path]:
    p = Path(out)
    if p.suffix == ".safetensors":
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + CARD_SUFFIX)


def _prepare_pairs(
    images: Sequence[Path], labels: Sequence[Path], layers: Mapping[str, int],
    bands: Sequence[int], workdir: Path, tag: str, n_classes: int,
) -> list[_Pair]:
    if len(images) != len(labels):
        raise ConfigError(
            f"{len(images)} image(s) but {len(labels)} label file(s); give one label file per "
            "image, in the same order",
        )
    pairs = []
    for k, (img, lab) in enumerate(zip(images, labels, strict=True)):
        scene = open_scene(img)
        if max(bands) > scene.count:
            raise BandError(
                f"training reads bands {list(bands)} but image '{img}' has {scene.count} "
                f"band(s); give an image with {max(bands)}+ bands or choose --bands from "
                f"1..{scene.count}",
                path=img,
                bands=tuple(bands),
                count=scene.count,
            )
        if not lab.exists():
            raise ConfigError(f"labels '{lab}' do not exist; check the path", path=lab)
        if lab.suffix.lower() in _RASTER_SUFFIXES:
            lab_scene = open_scene(lab)
            _check_raster_overlap(scene, lab_scene)
            _check_label_values(lab_scene, n_classes)
            pairs.append(_Pair(scene, lab))
        else:
            target = workdir / f"{tag}{k}.labels.tif"
            pairs.append(_Pair(scene, rasterize_labels(lab, scene, target, layers=layers)))
    return pairs


def _check_label_values(labels: Scene, n_classes: int) -> None:
    """Refuse a class raster with values outside ``0..n_classes-1`` (decimated read)."""
    if labels.count != 1:
        raise ConfigError(
            f"class raster '{labels.path}' has {labels.count} bands; give a one-band raster of "
            f"class ids 0..{n_classes - 1}",
            path=labels.path,
        )
    import rasterio

    rows, cols = labels.shape
    step = max(1, math.ceil(max(rows, cols) / 2048))
    with rasterio.open(labels.path) as src:
        sample = src.read(1, out_shape=(max(rows // step, 1), max(cols // step, 1)))
    values = np.unique(sample)
    bad = [int(v) for v in values if not 0 <= v < n_classes]
    if bad:
        raise ConfigError(
            f"class raster '{labels.path}' holds values {bad[:5]} outside the class ids "
            f"0..{n_classes - 1}; recode it or give matching classes",
            path=labels.path,
        )


def _check_raster_overlap(scene: Scene, labels: Scene) -> None:
    from rasterio.warp import transform_bounds

    lb = transform_bounds(labels.crs, scene.crs, *labels.bounds)
    ib = scene.bounds
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        raise ConfigError(
            f"labels '{labels.path}' do not overlap image '{scene.path}' (labels bounds "
            f"{[round(v, 1) for v in lb]}, image bounds {[round(v, 1) for v in ib]} in "
            f"{scene.crs.to_string()}); give labels for the same area",
            path=labels.path,
        )


def _datasets(pairs: Sequence[_Pair]) -> list[Any]:
    from torchgeo.datasets import IntersectionDataset

    image_cls, label_cls = _raster_classes()
    out = []
    for pair in pairs:
        img = image_cls(paths=[pair.image.path])
        lab = label_cls(paths=[str(pair.labels)])
        out.append(IntersectionDataset(img, lab))
    return out


def train_semantic(
    image: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    val_image: PathLike | Sequence[PathLike] | None = None,
    val_labels: PathLike | Sequence[PathLike] | None = None,
    val_fraction: float = 0.2,
    architecture: Mapping[str, Any] | Architecture | None = None,
    classes: Sequence[ClassInfo] = DEFAULT_CLASSES,
    layers: Mapping[str, int] | None = None,
    bands: Sequence[int] = (1, 2, 3),
    scale: float = 255.0,
    epochs: int | None = None,
    max_steps: int | None = None,
    steps_per_epoch: int = 100,
    batch_size: int = 8,
    patch_px: int = 256,
    lr: float = 2e-3,
    loss: Literal["ce", "focal", "jaccard"] = "ce",
    class_weights: Sequence[float] | None = None,
    seed: int = 0,
    name: str | None = None,
    description: str = "",
    dtype: Literal["float32", "float16"] = "float32",
    gsd_tolerance: float = 0.25,
    accelerator: str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    command: str | None = None,
    data_notes: Sequence[str] = (),
    overwrite: bool = False,
) -> ModelCard:
    """Train a semantic segmentation model and write ``<out>.safetensors`` + ``<out>.card.yaml``.

    Parameters
    ----------
    image, labels
        One training GeoTIFF (or a list) and its labels: a vector file whose
        ``layers`` are burned as classes, or a uint8 class raster. Labels are
        reprojected to the image CRS.
    out
        Output stem: writes ``<out>.safetensors`` and ``<out>.card.yaml``.
    val_image, val_labels
        Held-out validation scene(s). Without them the southern
        ``val_fraction`` of every training image (whole patches) is held out:
        no training patch reaches it.
    architecture
        ``{"library": "smp", "name": ..., "kwargs": ...}``; ``in_channels`` and
        ``classes`` are filled in. Default :data:`DEMO_ARCHITECTURE`.
    classes
        Output classes, ids ``0..K-1``; default background/building/road.
    layers
        Vector layer → class value, burned in order; default
        ``{"roads": 2, "buildings": 1}``.
    bands, scale
        1-based image bands the model reads and the divisor that scales them.
    epochs, max_steps, steps_per_epoch
        Length of training: ``epochs`` of ``steps_per_epoch`` batches, or
        ``max_steps`` batches (whichever ends first when both are given).
    batch_size, patch_px
        Patches per step and patch size in pixels.
    lr, loss, class_weights
        AdamW peak learning rate (one-cycle schedule), torchgeo loss name and
        optional per-class weights for ``"ce"``.
    seed
        Seeds Lightning, the samplers and the augmentations.
    dtype
        Storage dtype of the weights (``"float16"`` halves the file).
    command, data_notes
        Recorded in the card's ``training`` section (how to reproduce).

    Returns
    -------
    ModelCard
        The written card (with ``metrics`` such as ``val_iou_building``).

    Raises
    ------
    ConfigError
        Bad options, unreadable labels, labels that do not overlap the image,
        an image too small for the patch size.
    BandError
        An image lacks the requested bands.
    OutputExistsError
        ``<out>.*`` exists and ``overwrite`` is false (checked before training).
    """
    t0 = time.perf_counter()
    weights_path, card_path = _out_paths(out)
    for p in (weights_path, card_path):
        if p.exists() and not overwrite:
            raise OutputExistsError(
                f"output '{p}' already exists; pass --overwrite (overwrite=True) to replace it",
                path=p,
            )
    if epochs is None and max_steps is None:
        raise ConfigError("give epochs or max_steps (e.g. --epochs 10)")
    for label, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch)):
        if value < 1:
            raise ConfigError(f"{label} must be ≥ 1, got {value}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if not bands or min(bands) < 1:
        raise ConfigError(f"bands must be 1-based band numbers, got {list(bands)}")
    arch_data = dict(
        architecture.model_dump() if isinstance(architecture, Architecture)
        else (architecture or DEMO_ARCHITECTURE)
    )
    kwargs = dict(arch_data.get("kwargs") or {})
    kwargs.update(in_channels=len(bands), classes=len(classes))
    try:
        arch = Architecture.model_validate({**arch_data, "kwargs": kwargs})
    except ValidationError as exc:
        raise ConfigError(f"invalid architecture {arch_data}: {_one_line(exc)}") from None
    depth = int(kwargs.get("encoder_depth", 5))
    if patch_px < 32 or patch_px % (2**depth):
        raise ConfigError(
            f"patch_px={patch_px} must be ≥ 32 and a multiple of {2**depth} "
            f"(encoder depth {depth}); e.g. 256",
        )
    input_spec = InputSpec(bands=tuple(bands), normalization="scale", scale=scale)
    images = _as_list(image)
    label_files = _as_list(labels)
    layer_map = dict(layers or DEFAULT_LAYERS)
    if any(v >= len(classes) or v < 0 for v in layer_map.values()):
        raise ConfigError(
            f"layer classes {layer_map} must be class ids 0..{len(classes) - 1}"
        )
    stem = weights_path.name[: -len(".safetensors")]
    card_name = name or stem
    try:
        provisional = ModelCard(
            name=card_name, input=input_spec, classes=tuple(classes), architecture=arch,
            description=description,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid model settings: {_one_line(exc)}") from None

    with tempfile.TemporaryDirectory(prefix="terraseg-train-") as tmp:
        workdir = Path(tmp)
        pairs = _prepare_pairs(
            images, label_files, layer_map, bands, workdir, "train", len(classes)
        )
        if val_image is not None:
            if val_labels is None:
                raise ConfigError("val_image needs val_labels (one label file per image)")
            val_pairs = _prepare_pairs(
                _as_list(val_image), _as_list(val_labels), layer_map, bands, workdir, "val",
                len(classes),
            )
            train_rois = [None] * len(pairs)
            val_rois = [_whole_box(p.image, patch_px) for p in val_pairs]
        else:
            val_pairs = pairs
            split = [_boxes(p.image, val_fraction, patch_px) for p in pairs]
            train_rois = [s[0] for s in split]
            val_rois = [s[1] for s in split]

        import lightning.pytorch as pl
        from torch.utils.data import DataLoader
        from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

        pl.seed_everything(seed, workers=True, verbose=False)
        with _quiet():
            train_sets = _datasets(pairs)
            val_sets = train_sets if val_pairs is pairs else _datasets(val_pairs)
        total_steps = max_steps if max_steps is not None else 0
        if epochs is not None:
            by_epochs = epochs * steps_per_epoch
            total_steps = min(total_steps, by_epochs) if max_steps is not None else by_epochs
        n_epochs = math.ceil(total_steps / steps_per_epoch)
        per_scene = max(1, math.ceil(steps_per_epoch * batch_size / len(pairs)))
        gen = torch.Generator().manual_seed(seed)
        train_samplers = [
            RandomGeoSampler(ds, size=patch_px, length=per_scene, roi=roi, generator=gen)
            for ds, roi in zip(train_sets, train_rois, strict=True)
        ]
        val_samplers = [
            GridGeoSampler(ds, size=patch_px, stride=patch_px, roi=roi)
            for ds, roi in zip(val_sets, val_rois, strict=True)
        ]
        train_loader = DataLoader(
            _Scenes(train_sets, input_spec, augment=True, seed=seed),
            batch_size=batch_size,
            sampler=_ChainSampler(train_samplers, shuffle=True, seed=seed),
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            drop_last=True,
        )
        val_loader = DataLoader(
            _Scenes(val_sets, input_spec, augment=False, seed=seed),
            batch_size=batch_size,
            sampler=_ChainSampler(val_samplers, shuffle=False, seed=seed),
            num_workers=num_workers,
        )
        task_cls = _task_class()
        task = task_cls(
            terraseg_card=provisional.model_dump(mode="json"),
            total_steps=total_steps,
            model="unet",
            backbone=str(kwargs.get("encoder_name", "resnet18")),
            weights=None,
            in_channels=len(bands),
            num_classes=len(classes),
            loss=loss,
            class_weights=list(class_weights) if class_weights is not None else None,
            lr=lr,
        )
        with _quiet():
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=1,
                max_epochs=n_epochs,
                max_steps=total_steps,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=progress,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                deterministic=True,
                default_root_dir=str(workdir),
            )
            trainer.fit(task, train_dataloaders=train_loader)  # validated below, once
        net = task.model.cpu().eval()
        cm = _confusion(net, val_loader, len(classes), None)
        steps_done = int(trainer.global_step)
        epochs_done = int(trainer.current_epoch)

    metrics = _iou_metrics(cm, classes, "val_")
    seconds = time.perf_counter() - t0
    gsds = [p.image.gsd_m for p in pairs]
    held_out = (
        f"held-out scene(s) {', '.join(Path(p.image.path).name for p in val_pairs)}"
        if val_pairs is not pairs
        else f"the southern {val_fraction:.0%} of each training image (no training patch "
        "reaches it)"
    )
    card = provisional.model_copy(
        update={
            "gsd_m": float(f"{np.mean(gsds):.3g}"),
            "gsd_tolerance": gsd_tolerance,
            "training": TrainingInfo(
                data=list(data_notes) or [Path(p.image.path).name for p in pairs],
                command=command,
                seed=seed,
                epochs=epochs_done,
                steps=steps_done,
                batch_size=batch_size,
                patch_px=patch_px,
                lr=lr,
                seconds=round(seconds, 1),
                hardware=_hardware(accelerator),
                software=_versions(),
            ),
            "metrics": metrics,
            "evaluation": f"val_*: pixel IoU per class on {held_out}, {patch_px}-px patches",
        }
    )
    card = ModelCard.model_validate(card.model_dump())
    save_model(net, card, weights_path.with_suffix(""), dtype=dtype, overwrite=overwrite)
    log.info("trained %s in %.0f s: %s", card_name, seconds, metrics)
    return load_card(card_path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's tips and torchgeo/Lightning deprecation chatter during training."""
    lightning_loggers = [
        logging.getLogger(n)
        for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
    ]
    levels = [lg.level for lg in lightning_loggers]
    try:
        for lg in lightning_loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            yield
    finally:
        for lg, level in zip(lightning_loggers, levels, strict=True):
            lg.setLevel(level)


def _hardware(accelerator: str) -> str:
    if accelerator == "cpu" or not torch.cuda.is_available():
        return f"cpu x{torch.get_num_threads()} threads ({platform.machine()})"
    return f"{accelerator}: {torch.cuda.get_device_name(0)}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    pkgs = ("terraseg", "torch", "torchgeo", "segmentation-models-pytorch", "timm", "lightning")
    for pkg in pkgs:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
