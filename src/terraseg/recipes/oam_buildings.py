"""Reproduce the bundled ``oam-buildings`` model: buildings as instances on real aerial imagery.

A boundary model (background, building, road, building edge; roads are not
labelled in this data and come out empty) for aerial and drone imagery at about
0.3 m, trained with this project's own code on the real labelled buildings of
``../shared/data/real`` (OpenAerialMap imagery, OpenStreetMap and fAIr labels;
see that folder's README for licences). Run from a checkout::

    python -m terraseg.recipes.oam_buildings                 # train + evaluate
    python -m terraseg.recipes.oam_buildings --eval-only
    # on a slower machine, in runs of at most 25 minutes (exit status 75: run again)
    python -m terraseg.recipes.oam_buildings --max-minutes 25
    python -m terraseg.recipes.oam_buildings --max-minutes 25 --resume   # until it exits 0

The data is split by place, so that the test figures are on imagery the model
never saw, neither in training nor in validation:

* **training**: Zanzibar block 1, Catanduanes block 1, Banepa outskirts block 1,
  Banepa centre (resampled from 0.149 m to 0.298 m), and in stage 2 also Banepa
  north (loss masked outside ``label_extent_bbox.geojson``, where buildings are
  not labelled) and Nairobi block 2, all at OpenAerialMap's zoom 19 (0.30 m
  Mercator pixel); and four synthetic cities at 0.3 m
  (:func:`terraseg.synthetic.make_city`, made in the workdir), whose roofs
  (orange tiles, grey and white flat roofs, long blocks) the real places lack;
* **validation** (checkpoint and building filters): block 2 of Zanzibar,
  Catanduanes and Banepa outskirts, pooled: one image of a hundred-odd
  buildings picked both poorly;
* **test**: Kampala block A at its native 7.46 cm (``terraseg predict``
  resamples it to the model's 0.3 m) and Nairobi block 1 at 0.30 m;
* **measured, choosing nothing**: the zoom-21 (7.46 cm) file of each validation
  block, read at 0.3 m by the engine as Kampala is (``z21_*`` in the card).

``--renderings`` adds to stage 2 the zoom-21 files of its zoom-19 blocks, averaged
4:1 as the engine reads them; ``--hold-out PLACE`` validates on a place no stage saw.

Training starts from the bundled synthetic ``demo-instance`` (``init_from``).
After training, the card's ``building_min_score`` and ``building_min_area_m2``,
and the watershed that splits touching buildings (``building_landscape`` and
``building_seed_p``, of :data:`terraseg.recipes.evaluation.SPLIT_GRID`), are chosen
on the validation images (the candidate with the best building F1@0.5, matches
summed over them; :func:`terraseg.recipes.evaluation.choose_building_filters`),
then the validation and test images are measured with them.
Truth polygons of the test scenes are clipped to the image; pieces with less
than half their area inside are dropped (they cannot be matched fairly).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from terraseg.config import TrainConfig
from terraseg.models.resume import state_file
from terraseg.models.spec import BOUNDARY_CLASSES
from terraseg.recipes.demo_semantic import BUNDLED

NAME = "oam-buildings"
GSD_M = 0.3


@dataclass(frozen=True)
class Place:
    """One labelled image: of the shared real data, or (``seed``) a synthetic city."""

    folder: str
    image: str
    labels: str
    extent: str | None = None
    factor: int = 1  # integer decimation to ~0.3 m (Banepa centre: 0.149 m -> 0.298 m)
    seed: int | None = None  # a synthetic city: make_city(seed=...), written to the workdir

    @property
    def name(self) -> str:
        return Path(self.image).stem


SYNTHETIC_PX = 1536
SYNTHETIC_CRS = "EPSG:32636"


def synthetic(seed: int) -> Place:
    """A synthetic city, :data:`SYNTHETIC_PX` pixels square at 0.3 m (``make_city``)."""
    return Place("", f"city{seed}.tif", f"city{seed}.truth.gpkg", seed=seed)


SYNTHETIC = tuple(synthetic(seed) for seed in (101, 102, 103, 104))
"""Synthetic cities mixed into training: roof colours and shapes (orange tiles, grey and
white flat roofs, large blocks) that the real training places lack."""
_REAL_STAGE1 = (
    Place("zanzibar_oam_buildings", "zanzibar_oam_z19_block1.tif", "labels_block1.geojson"),
    Place("catanduanes_oam_buildings", "catanduanes_oam_z19_block1.tif", "labels_block1.geojson"),
    Place("banepa_outskirts_oam_z21_buildings", "banepa_oam_z19_block1.tif",
          "labels_block1.geojson"),
    Place("banepa_centre_oam_z19x512_buildings", "banepa_centre_oam_z19_512px.tif",
          "labels_osm.geojson", factor=2),
)
STAGE1 = (*_REAL_STAGE1, *SYNTHETIC)
"""Stage 1's training images (fully labelled)."""
TRAIN = (
    *_REAL_STAGE1,
    Place("banepa_north_oam_z19_buildings", "banepa_north_oam_z19.tif", "labels_osm.geojson",
          extent="label_extent_bbox.geojson"),
    Place("nairobi_oam_buildings", "nairobi_oam_z19_block2.tif", "labels_block2.geojson"),
    *SYNTHETIC,
)
"""Stage 2's training images: stage 1's, Banepa north (partly labelled) and Nairobi block 2
(grey slab roofs, dense)."""
VAL = (
    Place("zanzibar_oam_buildings", "zanzibar_oam_z19_block2.tif", "labels_block2.geojson"),
    Place("catanduanes_oam_buildings", "catanduanes_oam_z19_block2.tif", "labels_block2.geojson"),
    Place("banepa_outskirts_oam_z21_buildings", "banepa_oam_z19_block2.tif",
          "labels_block2.geojson"),
)
"""Validation (checkpoint and building filters, pooled): block 2 of three training places."""
TEST = (
    Place("kampala_block_a_buildings", "kampala_oam_z21_block_a.tif", "labels_block_a.geojson"),
    Place("nairobi_oam_buildings", "nairobi_oam_z19_block1.tif", "labels_block1.geojson"),
)

HOLD_OUT = ("zanzibar_oam_buildings", "catanduanes_oam_buildings",
            "banepa_outskirts_oam_z21_buildings")
"""Places whose both blocks can be validation (``--hold-out``): a place the model never saw."""


def _z21(place: Place, factor: int) -> Place:
    """The zoom-21 (7.46 cm) file of a zoom-19 block, the same ground, read ``factor``:1."""
    return Place(place.folder, place.image.replace("_z19_", "_z21_"), place.labels,
                 factor=factor)


RENDERINGS = tuple(_z21(p, 4) for p in TRAIN if "_z19_block" in p.image)
"""``--renderings``: the zoom-21 files of stage 2's zoom-19 training blocks, averaged 4:1
to 0.30 m as ``terraseg predict`` reads a finer scene (Kampala's case): the same ground and
labels as the tile server's zoom 19, which is sharper and less compressed."""


def split(hold_out: str | None = None,
          renderings: bool = False) -> tuple[tuple[Place, ...], ...]:
    """Stage 1's and stage 2's training places, the validation places, and their zoom-21 files.

    ``hold_out`` (a folder of :data:`HOLD_OUT`): that place's training block leaves both
    stages and joins the validation, so validation also measures an unseen place, as the
    test images are. The fourth group is the zoom-21 file of each validation block, read at
    the model's GSD by the engine as Kampala is: measured (``z21_*``), never used to choose.
    ``renderings`` adds :data:`RENDERINGS` (but the held-out place's) to stage 2.
    """
    extra = RENDERINGS if renderings else ()
    if hold_out is None:
        return STAGE1, (*TRAIN, *extra), VAL, tuple(_z21(p, 1) for p in VAL)
    if hold_out not in HOLD_OUT:
        raise SystemExit(f"--hold-out must be one of {', '.join(HOLD_OUT)}, got {hold_out!r}")
    val = (*(p for p in TRAIN if p.folder == hold_out), *VAL)
    return (tuple(p for p in STAGE1 if p.folder != hold_out),
            tuple(p for p in (*TRAIN, *extra) if p.folder != hold_out), val,
            tuple(_z21(p, 1) for p in val))


#: Loss weight of the building-edge class (background, building and road weigh 1).
EDGE_WEIGHT = 2.0
#: Stage 1: from the synthetic demo-instance, basic augmentation, best epoch by mean IoU.
STAGE1_SETTINGS = TrainConfig(
    task="boundary",
    edge_px=3,
    loss="ce+dice",
    class_weights=[1.0, 1.0, 1.0, EDGE_WEIGHT],
    classes=[c.model_dump() for c in BOUNDARY_CLASSES],
    layers={"buildings": 1},
    init_from="demo-instance",
    augment="basic",
    max_steps=200,
    steps_per_epoch=100,
    batch_size=8,
    patch_px=256,
    lr=1e-3,
    seed=0,
    num_workers=1,
    name=NAME,
    description="buildings as instances on real aerial/drone imagery at ~0.3 m "
    "(OpenAerialMap: Zanzibar, Catanduanes, Banepa, Nairobi); roads are not trained",
    dtype="float16",
    # as the bundled weights were trained: 2-3x faster than "32" on a CPU with native
    # bfloat16 (AVX512-BF16/AMX), emulated (slower) on one without; --precision 32 there
    precision="bf16-mixed",
)
#: Stage 2: from stage 1, all training images, ``muted`` augmentation (``full`` for real
#: imagery, and a quarter of patches pulled towards grey; it won on a held-out place), a
#: contact band of 5 px (1.5 m) each side, 2000 steps, the best epoch by the pooled
#: validation building IoU (see benchmarks/RESULTS.md for what each choice bought).
SETTINGS = STAGE1_SETTINGS.model_copy(
    update={"augment": "muted", "monitor": "val_iou_building", "seed": 1, "max_steps": 2000,
            "edge_px": 5}
)


def data_root() -> Path:
    """The shared real data (``TERRASEG_REAL_DATA`` or ``../shared/data/real`` of the checkout)."""
    env = os.environ.get("TERRASEG_REAL_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[4] / "shared/data/real"
    if not root.is_dir():
        raise SystemExit(f"real data not found at {root}; set TERRASEG_REAL_DATA")
    return root


def prepared_image(place: Place, root: Path, workdir: Path) -> Path:
    """The place's image, decimated by ``place.factor`` (area average) into ``workdir``; a
    synthetic place's city, made in ``workdir``."""
    if place.seed is not None:
        city = workdir / place.image
        if not city.exists():
            from terraseg.synthetic import make_city

            make_city(city, size_px=SYNTHETIC_PX, seed=place.seed, gsd_m=GSD_M,
                      crs=SYNTHETIC_CRS)
        return city
    src_path = root / place.folder / place.image
    if place.factor == 1:
        return src_path
    import rasterio
    from rasterio.enums import ColorInterp, Resampling

    out = workdir / f"{place.name}_x{place.factor}.tif"
    if out.exists():
        return out
    with rasterio.open(src_path) as src:
        shape = (src.height // place.factor, src.width // place.factor)
        data = src.read(out_shape=(src.count, *shape), resampling=Resampling.average)
        profile = src.profile | {
            "height": shape[0], "width": shape[1], "compress": "deflate", "photometric": "rgb",
            "transform": src.transform * src.transform.scale(place.factor, place.factor),
            "tiled": True, "blockxsize": 256, "blockysize": 256,
        }
        if ColorInterp.alpha in src.colorinterp:  # RGBA stays RGBA
            profile["alpha"] = "YES"
    tmp = out.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    tmp.replace(out)
    return out


def footprint(image: Path, workdir: Path) -> str:
    """A GeoJSON of ``image``'s bounds: the label extent of a fully labelled image."""
    import geopandas as gpd
    import rasterio
    import shapely

    out = workdir / f"{image.stem}.extent.geojson"
    if not out.exists():
        with rasterio.open(image) as src:
            frame = gpd.GeoDataFrame(geometry=[shapely.box(*src.bounds)], crs=src.crs)
        frame.to_file(out, driver="GeoJSON")
    return str(out)


def clipped_truth(place: Place, root: Path, workdir: Path) -> Path:
    """Truth: the labels in the image CRS, clipped to the image, half-outside pieces dropped."""
    import geopandas as gpd
    import rasterio
    import shapely

    out = workdir / f"{place.name}.truth.gpkg"
    with rasterio.open(root / place.folder / place.image) as src:
        crs, box = src.crs, shapely.box(*src.bounds)
    gdf = gpd.read_file(root / place.folder / place.labels).to_crs(crs)
    geoms = shapely.make_valid(gdf.geometry.values)
    inside = shapely.intersection(geoms, box)
    keep = shapely.area(inside) >= 0.5 * shapely.area(geoms)
    truth = gpd.GeoDataFrame(geometry=inside[keep], crs=crs)
    truth = truth[truth.geometry.area > 0]
    truth.to_file(out, layer="buildings", driver="GPKG")
    return out


def _note(place: Place) -> str:
    """How the card names a training image."""
    if place.seed is not None:
        return (f"terraseg.synthetic.make_city(size_px={SYNTHETIC_PX}, seed={place.seed}, "
                f"gsd_m={GSD_M}, crs={SYNTHETIC_CRS}) (training)")
    return (f"{place.folder}/{place.image} "
            f"(training{f', decimated x{place.factor}' if place.factor > 1 else ''})")


def train(root: Path, workdir: Path, stem: Path, places: Sequence[Place],
          settings: TrainConfig, command: str, val: Sequence[Place] = VAL) -> None:
    """Train on ``places``, validated on ``val``, into ``<stem>.safetensors``."""
    from terraseg.models.train import train_semantic

    images = [prepared_image(p, root, workdir) for p in places]
    labels = [workdir / p.labels if p.seed is not None else root / p.folder / p.labels
              for p in places]
    extents = [str(root / p.folder / p.extent) if p.extent else footprint(image, workdir)
               for p, image in zip(places, images, strict=True)]
    notes = [_note(p) for p in places] + [f"{p.folder}/{p.image} (validation)" for p in val]
    train_semantic(
        images, labels, stem, settings,
        val_image=[prepared_image(p, root, workdir) for p in val],
        val_labels=[root / p.folder / p.labels for p in val],
        overwrite=True, command=command, data_notes=notes, progress=True,
        label_extent=extents,
    )


def evaluate(stem: Path, root: Path, workdir: Path, val: Sequence[Place] = VAL,
             z21: Sequence[Place] = ()) -> dict[str, float]:
    """Predict each ``val``, :data:`TEST` and ``z21`` image with the engine; score its
    buildings.

    Building F1, precision, recall and mean IoU at IoU >= 0.5 (SpaceNet rule) and the
    count ratio, as ``val_<image>_*``, ``test_<image>_*`` and ``z21_<image>_*``.
    """
    from terraseg.api import predict_to_dir
    from terraseg.engine.postprocess import vectorize_scene
    from terraseg.evaluate.scores import evaluate as score

    metrics: dict[str, float] = {}
    for role, place in [*(("val", p) for p in val), *(("test", p) for p in TEST),
                        *(("z21", p) for p in z21)]:
        image = prepared_image(place, root, workdir)
        out = workdir / f"test-{place.name}"
        t0 = time.perf_counter()
        result = predict_to_dir(image, out, model=str(stem.with_suffix(".safetensors")),
                                device="cpu", write_probabilities=True, overwrite=True,
                                show_progress=False)
        vectorize_scene(result.classes_path, out / "instances.tif", out, scene_name=place.name,
                        probabilities_path=result.probabilities_path, overwrite=True)
        seconds = time.perf_counter() - t0
        b = score(out / f"{place.name}.gpkg", clipped_truth(place, root, workdir),
                  task="buildings").buildings
        assert b is not None
        key = f"{role}_{place.name}"
        metrics.update({
            f"{key}_building_f1": b.f1, f"{key}_building_precision": b.precision,
            f"{key}_building_recall": b.recall, f"{key}_building_mean_iou": b.mean_iou,
            f"{key}_count_ratio": b.n_pred / b.n_truth if b.n_truth else float("nan"),
            f"{key}_seconds": seconds,
        })
        print(f"{role} {place.name}: F1 {b.f1:.3f} P {b.precision:.3f} R {b.recall:.3f} "
              f"mIoU {b.mean_iou:.3f} pred {b.n_pred} truth {b.n_truth} ({seconds:.1f} s)",
              flush=True)
    return {k: round(float(v), 4) for k, v in metrics.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=Path("oam-work"),
                        help="Resampled images, truth files, stage 1 and test outputs.")
    parser.add_argument("--out", type=Path, default=BUNDLED, help="Folder for weights and card.")
    parser.add_argument("--stage1-steps", type=int, default=STAGE1_SETTINGS.max_steps)
    parser.add_argument("--max-steps", type=int, default=SETTINGS.max_steps,
                        help="Steps of stage 2.")
    parser.add_argument("--lr", type=float, default=SETTINGS.lr,
                        help="Peak learning rate of stage 2 (one-cycle schedule).")
    parser.add_argument("--edge-weight", type=float, default=EDGE_WEIGHT,
                        help="Loss weight of the building-edge class in stage 2.")
    parser.add_argument("--edge-px", type=int, default=SETTINGS.edge_px,
                        help="Width of the building-edge (contact) band of stage 2's targets, "
                        "pixels on each side.")
    parser.add_argument("--augment", default=SETTINGS.augment,
                        help="Training augmentation of stage 2 (see terraseg train --augment).")
    parser.add_argument("--precision", default=SETTINGS.precision,
                        choices=["32", "bf16-mixed", "16-mixed"],
                        help="Arithmetic of stage 2 (terraseg train --precision); bf16-mixed "
                        "is about 2.3x faster on a CPU with native bfloat16.")
    parser.add_argument("--hold-out", default=None, choices=HOLD_OUT,
                        help="Leave this place out of training (both stages); both its blocks "
                        "are validation: a validation place the model never saw.")
    parser.add_argument("--renderings", action="store_true",
                        help="Stage 2 also trains on the zoom-21 files of its zoom-19 blocks, "
                        "averaged to 0.3 m as predict reads a finer scene.")
    parser.add_argument("--stage1", type=Path, default=None,
                        help="Use this model as stage 1's result instead of training it.")
    parser.add_argument("--stage1-only", action="store_true",
                        help="Train stage 1 into the workdir and stop (run 1 of 2; run 2 is "
                        "--stage1 WORKDIR/oam-buildings-stage1.safetensors).")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="Pause the stage being trained after the first epoch past this "
                        "many minutes (exit status 75); rerun the same command with --resume.")
    parser.add_argument("--resume", action="store_true",
                        help="Continue a paused stage (its state in WORKDIR or OUT); a "
                        "finished stage 1 in WORKDIR is used as it is.")
    parser.add_argument("--eval-only", action="store_true",
                        help="Only re-choose the building filters and watershed, and "
                        "re-measure val_/test_/z21_*.")
    args = parser.parse_args(argv)
    stage1_places, train_places, val, z21 = split(args.hold_out, args.renderings)
    root = data_root()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stem = args.out / NAME
    if not args.eval_only:
        stage1 = args.stage1
        module = "python -m terraseg.recipes.oam_buildings"
        options = ((f" --hold-out {args.hold_out}" if args.hold_out else "")
                   + (f" --precision {args.precision}"
                      if args.precision != SETTINGS.precision else ""))
        runs = {"max_minutes": args.max_minutes}
        if stage1 is None:
            stage1 = args.workdir / f"{NAME}-stage1"
            paused = state_file(stage1).exists()
            if not (args.resume and stage1.with_suffix(".safetensors").exists() and not paused):
                train(root, args.workdir, stage1, stage1_places, STAGE1_SETTINGS.model_copy(
                    update={"max_steps": args.stage1_steps, "precision": args.precision,
                            "resume": args.resume and paused, **runs}),
                    f"{module}{options} (stage 1)", val)
            stage1 = stage1.with_suffix(".safetensors")
        if args.stage1_only:
            print(f"stage 1: {stage1}; stage 2: python -m terraseg.recipes.oam_buildings "
                  f"--workdir {args.workdir} --stage1 {stage1}{options}", flush=True)
            return
        settings = SETTINGS.model_copy(update={"init_from": str(stage1),
                                               "max_steps": args.max_steps, "lr": args.lr,
                                               "augment": args.augment,
                                               "edge_px": args.edge_px,
                                               "precision": args.precision,
                                               "class_weights": [1.0, 1.0, 1.0,
                                                                 args.edge_weight],
                                               "resume": args.resume
                                               and state_file(stem).exists(),
                                               **runs})
        train(root, args.workdir, stem, train_places, settings,
              f"{module} --stage1-steps {args.stage1_steps} --max-steps {args.max_steps}"
              + (f" --lr {args.lr:g}" if args.lr != SETTINGS.lr else "")
              + (f" --edge-weight {args.edge_weight:g}"
                 if args.edge_weight != EDGE_WEIGHT else "")
              + (f" --edge-px {args.edge_px}" if args.edge_px != SETTINGS.edge_px else "")
              + (f" --augment {args.augment}" if args.augment != SETTINGS.augment else "")
              + (" --renderings" if args.renderings else "")
              + options + f" (stage 2, from {stage1.name})", val)
    from terraseg.recipes.evaluation import SPLIT_GRID, record_building_filters

    record_building_filters(stem, [prepared_image(p, root, args.workdir) for p in val],
                            [clipped_truth(p, root, args.workdir) for p in val], args.workdir,
                            splits=SPLIT_GRID)
    metrics = evaluate(stem, root, args.workdir, val, z21)
    from terraseg.models.card import load_card, save_card

    card_path = stem.with_name(f"{stem.name}.card.yaml")
    card = load_card(card_path)
    card = card.model_copy(update={"metrics": {**card.metrics, **metrics}})
    save_card(card, card_path, overwrite=True)
    print(f"{card_path}: {card.metrics}")


if __name__ == "__main__":
    from terraseg.errors import TrainingPaused

    try:
        main()
    except TrainingPaused as exc:  # not a failure: the same command with --resume goes on
        print(f"paused: {exc}", file=sys.stderr, flush=True)
        sys.exit(75)
