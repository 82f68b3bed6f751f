"""Training data: image/label pairs, training and held-out areas, torchgeo datasets and loaders.

torchgeo's ``RasterDataset`` reads image and labels, ``IntersectionDataset``
pairs them, ``RandomGeoSampler`` draws training patches and
``GridGeoSampler`` tiles a held-out area: the southern strip of each image
(whole patches), or whole separate validation scenes. Scenes are kept apart
(one dataset each) because independent scenes, synthetic ones in particular,
may share coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from terraseg.config import TrainConfig
from terraseg.errors import BandError, ConfigError
from terraseg.io.scene import Scene, open_scene
from terraseg.models.augment import augment_names, augment_sample
from terraseg.models.labels import (
    RASTER_SUFFIXES,
    PathLike,
    check_label_values,
    check_raster_overlap,
    labelled_area,
    rasterize_labels,
)
from terraseg.models.spec import InputSpec

if TYPE_CHECKING:
    import shapely
    from torchgeo.datasets import IntersectionDataset, RasterDataset
    from torchgeo.datasets.utils import GeoSlice
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

__all__ = [
    "Batch",
    "ChainSampler",
    "SceneDataset",
    "ScenePair",
    "TrainingAreas",
    "as_paths",
    "intersection_datasets",
    "make_loaders",
    "prepare_pairs",
    "training_areas",
]

Batch = dict[str, torch.Tensor]
"""One sample or batch: ``{"image": float tensor, "mask": long tensor}``."""


@dataclass(frozen=True, slots=True)
class ScenePair:
    """A training or validation image and its class raster."""

    image: Scene
    labels: Path  # class raster on (or warpable to) the image grid


@dataclass(frozen=True, slots=True)
class TrainingAreas:
    """Pairs to train and validate on, and the area of each scene each may use."""

    train: list[ScenePair]
    val: list[ScenePair]  # the same list object as ``train`` when the southern strips are held out
    train_rois: list[shapely.Polygon | None]
    val_rois: list[shapely.Polygon]

    @property
    def held_out_scenes(self) -> bool:
        """Validation uses separate scenes (not the southern strip of the training images)."""
        return self.val is not self.train


def as_paths(value: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or several, as a list of paths."""
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    return [Path(v) for v in value]


def prepare_pairs(
    images: Sequence[Path], labels: Sequence[Path], layers: Mapping[str, int],
    bands: Sequence[int], workdir: Path, tag: str, n_classes: int, edge_px: int | None = None,
) -> list[ScenePair]:
    """Open images, check bands and labels, rasterize vector labels into ``workdir``."""
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
        if lab.suffix.lower() in RASTER_SUFFIXES:
            lab_scene = open_scene(lab)
            check_raster_overlap(scene, lab_scene)
            check_label_values(lab_scene, n_classes)
            pairs.append(ScenePair(scene, lab))
        else:
            target = workdir / f"{tag}{k}.labels.tif"
            pairs.append(ScenePair(scene, rasterize_labels(
                lab, scene, target, layers=layers, edge_px=edge_px, n_classes=n_classes,
            )))
    return pairs


def training_areas(
    images: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike],
    val_images: PathLike | Sequence[PathLike] | None,
    val_labels: PathLike | Sequence[PathLike] | None,
    *,
    layers: Mapping[str, int],
    cfg: TrainConfig,
    n_classes: int,
    workdir: Path,
) -> TrainingAreas:
    """Training pairs and held-out areas: separate validation scenes, or southern strips.

    Vector labels are rasterized into ``workdir``; without validation scenes
    the southern ``cfg.val_fraction`` of each training image is held out. With
    ``cfg.gsd_m``, images are first resampled to that GSD (in ``workdir``). With
    ``cfg.label_extent``, training labels outside the extent are
    ``IGNORE_LABEL``, and patches (and the held-out strip) are drawn within the
    extent's bounding box.
    """
    edge_px = cfg.edge_px if cfg.task == "boundary" else None
    pairs = prepare_pairs(
        _at_gsd(as_paths(images), cfg.gsd_m, workdir, "train"), as_paths(labels), layers,
        cfg.bands, workdir, "train", n_classes, edge_px,
    )
    pairs, areas = _with_extents(pairs, cfg.label_extent, workdir, "train")
    areas = [  # a labelling file: patches within its labelled segments (unless an extent is given)
        labelled_area(lab, p.image, layers, min_px=(2 * cfg.patch_px + 2, cfg.patch_px + 2))
        if area is None else area
        for p, area, lab in zip(pairs, areas, as_paths(labels), strict=True)
    ]
    if val_images is not None:
        if val_labels is None:
            raise ConfigError("val_image needs val_labels (one label file per image)")
        val_pairs = prepare_pairs(
            _at_gsd(as_paths(val_images), cfg.gsd_m, workdir, "val"), as_paths(val_labels),
            layers, cfg.bands, workdir, "val", n_classes, edge_px,
        )
        val_pairs, _ = _with_extents(val_pairs, cfg.val_label_extent, workdir, "val")
        train_rois: list[shapely.Polygon | None] = [
            None if area is None else _labelled_box(p.image, area, cfg.patch_px)
            for p, area in zip(pairs, areas, strict=True)
        ]
        val_rois = [_whole_box(p.image, cfg.patch_px) for p in val_pairs]
        return TrainingAreas(pairs, val_pairs, train_rois, val_rois)
    if cfg.val_label_extent is not None:
        raise ConfigError(
            "val_label_extent needs validation scenes (--val IMAGE,LABELS); the held-out strips "
            "of the training images follow label_extent"
        )
    split = [
        _boxes(
            p.image, cfg.val_fraction, cfg.patch_px,
            within=None if area is None else _labelled_box(p.image, area, cfg.patch_px),
        )
        for p, area in zip(pairs, areas, strict=True)
    ]
    return TrainingAreas(pairs, pairs, [s[0] for s in split], [s[1] for s in split])


def _at_gsd(images: list[Path], gsd_m: float | None, workdir: Path, tag: str) -> list[Path]:
    """The images, or (``gsd_m``) copies resampled to it in ``workdir`` (names kept).

    Vector labels are then rasterized on the resampled grid (edge rings stay
    ``edge_px`` wide); class rasters are read onto it by torchgeo (nearest).
    """
    if gsd_m is None:
        return images
    from terraseg.models.resample import resample_to_grid, target_grid

    out = []
    for k, path in enumerate(images):
        scene = open_scene(path)
        grid = target_grid(scene, gsd_m)
        out.append(resample_to_grid(path, workdir / f"{tag}{k}" / path.name, scene, grid,
                                    labels=False))
    return out


def _with_extents(
    pairs: list[ScenePair], label_extent: str | Sequence[str] | None, workdir: Path, tag: str
) -> tuple[list[ScenePair], list[shapely.Geometry | None]]:
    """Pairs whose labels are ``IGNORE_LABEL`` outside their label extent, and the extents.

    ``tag``: ``"train"`` or ``"val"``, names the files and the messages.
    """
    from terraseg.models.extent import extent_paths, mask_outside_extent

    out: list[ScenePair] = []
    areas: list[shapely.Geometry | None] = []
    for k, (pair, extent) in enumerate(
        zip(pairs, extent_paths(label_extent, len(pairs), tag), strict=True)
    ):
        if extent is None:
            out.append(pair)
            areas.append(None)
            continue
        masked, area = mask_outside_extent(
            pair.labels, extent, workdir / f"{tag}{k}.extent.labels.tif"
        )
        out.append(ScenePair(pair.image, masked))
        areas.append(_to_crs(area, open_scene(masked).crs, pair.image.crs))
    return out, areas


def _to_crs(geom: shapely.Geometry, src: object, dst: object) -> shapely.Geometry:
    import geopandas as gpd

    if src == dst:
        return geom
    return gpd.GeoSeries([geom], crs=src).to_crs(dst).iloc[0]


def _labelled_box(scene: Scene, area: shapely.Geometry, patch_px: int) -> shapely.Polygon:
    """The bounding box of a label extent within a scene, on its pixel grid (whole pixels)."""
    import shapely

    left, bottom, right, top = scene.bounds
    res_x, res_y = scene.res
    a_left, a_bottom, a_right, a_top = area.bounds
    c0 = max(0, math.floor((a_left - left) / res_x))
    c1 = min(scene.shape[1], math.ceil((a_right - left) / res_x))
    r0 = max(0, math.floor((top - a_top) / res_y))
    r1 = min(scene.shape[0], math.ceil((top - a_bottom) / res_y))
    if r1 - r0 < patch_px or c1 - c0 < patch_px:
        raise ConfigError(
            f"the label extent of image '{scene.path}' covers {max(r1 - r0, 0)}x"
            f"{max(c1 - c0, 0)} px of it, less than one {patch_px}-px patch; check the extent "
            "file or use a smaller --patch-px",
            path=scene.path,
        )
    return shapely.box(left + c0 * res_x, top - r1 * res_y, left + c1 * res_x, top - r0 * res_y)


def _raster_classes() -> tuple[type[RasterDataset], type[RasterDataset]]:
    from torchgeo.datasets import RasterDataset

    class ImageRaster(RasterDataset):
        filename_glob = "*"
        is_image = True

    class LabelRaster(RasterDataset):
        filename_glob = "*"
        is_image = False

    return ImageRaster, LabelRaster


def _boxes(
    scene: Scene, val_fraction: float, patch_px: int, *, within: shapely.Polygon | None = None
) -> tuple[shapely.Polygon, shapely.Polygon]:
    """Training area (north) and held-out validation area (south, whole patches) of a scene.

    ``within``: a box on the scene's pixel grid (the labelled part) to split instead.
    """
    import shapely

    res_x, res_y = scene.res
    left, bottom, right, top = scene.bounds if within is None else within.bounds
    rows, cols = round((top - bottom) / res_y), round((right - left) / res_x)
    val_rows = max(patch_px, int(round(rows * val_fraction / patch_px)) * patch_px)
    val_cols = (cols // patch_px) * patch_px
    if rows - val_rows < patch_px or val_cols < patch_px:
        raise ConfigError(
            f"image '{scene.path}' ({rows}x{cols} px{' labelled' if within else ''}) is too "
            f"small to hold out "
            f"{val_rows} rows for validation and train on {patch_px}-px patches; use a larger "
            "image, a smaller --patch-px, or separate validation scenes",
            path=scene.path,
        )
    split_y = bottom + val_rows * res_y
    train = shapely.box(left, split_y, right, top)
    val = shapely.box(left, bottom, left + val_cols * res_x, split_y)
    return train, val


def _whole_box(scene: Scene, patch_px: int) -> shapely.Polygon:
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


class SceneDataset(torch.utils.data.Dataset[Batch]):
    """Several torchgeo ``IntersectionDataset`` s indexed by ``(scene, query)``.

    Scenes are kept apart (not merged into one index) because independent
    scenes, synthetic ones in particular, may share coordinates. Samples are
    band-selected, scaled and (for training) augmented by the named
    :data:`~terraseg.models.augment.AUGMENTATIONS`, from a generator seeded by
    ``seed`` (and the DataLoader worker's id, so workers differ).
    """

    def __init__(
        self,
        datasets: Sequence[IntersectionDataset],
        input_spec: InputSpec,
        *,
        augment: Sequence[str] = (),
        seed: int,
    ) -> None:
        self.datasets = list(datasets)
        self.band_index = [b - 1 for b in input_spec.bands]
        self.input_spec = input_spec
        self.augment = tuple(augment)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker: int | None = None

    def __len__(self) -> int:  # only reached through the samplers
        return 0

    def __getitem__(self, item: tuple[int, GeoSlice]) -> Batch:
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
        if y.ndim == 3:
            y = y[0]
        if self.augment:
            info = torch.utils.data.get_worker_info()
            if info is not None and self._worker != info.id:  # each worker its own stream
                self._worker = info.id
                self.rng = np.random.default_rng([self.seed, info.id])
            x, y = augment_sample(x, y, self.augment, self.rng)
        return {"image": x.contiguous(), "mask": y.contiguous()}


class InsideGrid:
    """A torchgeo ``GridGeoSampler`` whose patches all lie inside its area.

    torchgeo puts the i-th patch at ``i * stride`` without moving the last one
    back, so an area that is not a whole number of strides (or a patch a hair
    under the stride, :func:`_crs_size`) gets a last row and column reaching past
    the data: read as a black image over background labels, they counted as
    validation pixels (a 1024² validation scene came out as 25 patches of 256, 9
    of them outside it, and a model's building IoU read 0.20 instead of 0.89).
    Here such a patch is moved back inside the area, and a repeat is dropped.
    """

    def __init__(self, grid: Any) -> None:
        xmin, ymin, xmax, ymax = (float(v) for v in grid.index.geometry.total_bounds)
        res_x, res_y = grid.res[0], grid.res[1]
        self.items: list[tuple[slice, slice, slice]] = []
        seen = set()
        for sx, sy, st in grid:
            w, h = sx.stop - sx.start, sy.stop - sy.start
            x0 = max(min(sx.start, xmax - w), xmin)
            y0 = max(min(sy.start, ymax - h), ymin)
            key = (round(x0 / res_x), round(y0 / res_y), st.start, st.stop)
            if key not in seen:
                seen.add(key)
                self.items.append((slice(x0, x0 + w), slice(y0, y0 + h), st))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        return iter(self.items)


class ChainSampler(torch.utils.data.Sampler[tuple[int, "GeoSlice"]]):
    """Yields ``(scene, query)`` from one torchgeo sampler per scene, shuffled or in order."""

    def __init__(
        self,
        samplers: Sequence[RandomGeoSampler | GridGeoSampler | InsideGrid],
        *,
        shuffle: bool,
        seed: int,
    ) -> None:
        self.samplers = list(samplers)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[tuple[int, GeoSlice]]:
        items = [(i, q) for i, s in enumerate(self.samplers) for q in s]
        if self.shuffle:
            order = torch.randperm(len(items), generator=self.generator).tolist()
            items = [items[j] for j in order]
        return iter(items)


def intersection_datasets(pairs: Sequence[ScenePair]) -> list[IntersectionDataset]:
    """One torchgeo ``IntersectionDataset`` (image ∩ class raster) per pair."""
    from torchgeo.datasets import IntersectionDataset

    image_cls, label_cls = _raster_classes()
    out = []
    for pair in pairs:
        img = image_cls(paths=[pair.image.path])
        lab = label_cls(paths=[str(pair.labels)])
        out.append(IntersectionDataset(img, lab))
    return out


def _crs_size(ds: IntersectionDataset, patch_px: int) -> tuple[float, float]:
    """A ``patch_px`` patch in CRS units, a millionth of a pixel short.

    torchgeo's samplers keep an area only when it is at least the patch size; an
    image exactly ``patch_px`` high (a 256-row image, a 512-row one with half held
    out) measures a hair less in floating point and would be dropped. Reads are
    rounded to whole pixels, so the patches stay ``patch_px`` square.
    """
    res_x, res_y = ds.res
    return (patch_px - 1e-6) * res_y, (patch_px - 1e-6) * res_x


def make_loaders(
    train_sets: Sequence[IntersectionDataset],
    val_sets: Sequence[IntersectionDataset],
    areas: TrainingAreas,
    input_spec: InputSpec,
    cfg: TrainConfig,
) -> tuple[DataLoader[Batch], DataLoader[Batch]]:
    """Training loader (random patches, augmented) and validation loader (a patch grid)."""
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler, Units

    per_scene = max(1, math.ceil(cfg.steps_per_epoch * cfg.batch_size / len(areas.train)))
    gen = torch.Generator().manual_seed(cfg.seed)
    train_samplers = [
        RandomGeoSampler(ds, size=_crs_size(ds, cfg.patch_px), length=per_scene, roi=roi,
                         generator=gen, units=Units.CRS)
        for ds, roi in zip(train_sets, areas.train_rois, strict=True)
    ]
    val_samplers = [
        InsideGrid(GridGeoSampler(ds, size=_crs_size(ds, cfg.patch_px),
                                  stride=_crs_size(ds, cfg.patch_px), roi=roi, units=Units.CRS))
        for ds, roi in zip(val_sets, areas.val_rois, strict=True)
    ]
    train_loader = DataLoader(
        SceneDataset(train_sets, input_spec, augment=augment_names(cfg.augment), seed=cfg.seed),
        batch_size=cfg.batch_size,
        sampler=ChainSampler(train_samplers, shuffle=True, seed=cfg.seed),
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        drop_last=True,
    )
    val_loader = DataLoader(
        SceneDataset(val_sets, input_spec, seed=cfg.seed),
        batch_size=cfg.batch_size,
        sampler=ChainSampler(val_samplers, shuffle=False, seed=cfg.seed),
        num_workers=cfg.num_workers,
    )
    return train_loader, val_loader
