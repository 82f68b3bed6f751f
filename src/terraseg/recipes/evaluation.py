"""Measure a bundled model the way a user runs it: predict, instances, vectors, evaluate.

The same library calls as ``terraseg predict SCENE --model M`` followed by
``terraseg evaluate OUT/<scene>.gpkg <scene>.truth.gpkg`` and ``terraseg evaluate
OUT/classes.tif <scene>.truth.tif``, so the figures in a card are the figures a
user gets.
"""

from __future__ import annotations

import time
from pathlib import Path

from terraseg.api import predict_to_dir
from terraseg.engine.postprocess import vectorize_scene
from terraseg.evaluate.scores import evaluate

__all__ = ["MIN_SCORE_GRID", "choose_min_score", "evaluate_buildings", "record_evaluation",
           "record_figures", "record_min_score"]

MIN_SCORE_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""Candidate ``building_min_score`` values (0.50 ... 0.95) of :func:`choose_min_score`."""


def evaluate_buildings(
    model: str | Path, scene: Path, workdir: Path, *, chunk_px: int = 2048
) -> tuple[dict[str, float], str]:
    """Card metrics (``eval_*``) of ``model`` on a synthetic ``scene`` with its truth files.

    Returns the metrics (building F1@0.5, precision, recall, mean IoU, AP, count
    ratio; pixel IoU per class; road F1 and APLS; seconds and Mpx/s of the
    prediction) and one sentence saying what they measure.
    """
    out = workdir / f"eval-{Path(model).stem}-{scene.stem}"
    t0 = time.perf_counter()
    result = predict_to_dir(scene, out, model=str(model), chunk_px=chunk_px, device="cpu",
                            write_probabilities=True, overwrite=True, show_progress=False)
    predict_s = time.perf_counter() - t0
    vectors = vectorize_scene(
        result.classes_path, out / "instances.tif", out, scene_name=scene.stem,
        chunk_px=chunk_px, probabilities_path=result.probabilities_path, overwrite=True,
    )
    total_s = time.perf_counter() - t0
    truth_gpkg = scene.with_name(f"{scene.stem}.truth.gpkg")
    vec = evaluate(out / f"{scene.stem}.gpkg", truth_gpkg, task="auto")
    pix = evaluate(result.classes_path, scene.with_name(f"{scene.stem}.truth.tif"), task="pixels")
    metrics: dict[str, float] = {}
    b = vec.buildings
    if b is not None:
        metrics.update(
            eval_building_f1=b.f1, eval_building_precision=b.precision,
            eval_building_recall=b.recall, eval_building_mean_iou=b.mean_iou,
            eval_building_count_ratio=b.n_pred / b.n_truth if b.n_truth else float("nan"),
        )
        if b.ap is not None:
            metrics["eval_building_ap"] = b.ap
    if vec.roads is not None:
        metrics.update(eval_road_f1=vec.roads.f1, eval_road_apls=vec.roads.apls.apls)
    if pix.pixels is not None:
        names = {0: "background", 1: "building", 2: "road"}
        for value, scores in pix.pixels.per_class().items():
            metrics[f"eval_iou_{names.get(value, f'class{value}')}"] = float(scores["iou"])
    mpx = result.stats["shape"][0] * result.stats["shape"][1] / 1e6
    metrics.update(eval_seconds=total_s, eval_mpx_s=mpx / total_s,
                   eval_predict_mpx_s=mpx / predict_s)
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    n = vectors.n_instances
    note = (
        f"eval_*: terraseg predict (tile 512, overlap 64, chunk {chunk_px}, CPU) + instances + "
        f"vectors of the synthetic {result.stats['shape'][0]}x{result.stats['shape'][1]}-px "
        f"scene {scene.name} (used neither in training nor in validation), scored with "
        f"terraseg evaluate against its truth: building F1/precision/recall/mean IoU at IoU "
        f">= 0.5 (SpaceNet rule), AP@0.5 over the building scores, count ratio "
        f"predicted/true ({n} instances), pixel IoU per class; eval_mpx_s covers predict "
        f"through export, eval_predict_mpx_s the class raster alone"
    )
    return metrics, note


def choose_min_score(
    model: str | Path, scene: Path, truth: Path, workdir: Path, *, chunk_px: int = 2048,
    grid: tuple[float, ...] = MIN_SCORE_GRID,
) -> tuple[float, dict[float, float]]:
    """The ``building_min_score`` of :data:`MIN_SCORE_GRID` with the best building F1@0.5.

    ``scene`` is validation data (never the test scene): ``terraseg predict`` with
    every building kept (``min_score=0``), then the buildings scoring at least each
    candidate are scored against ``truth`` with ``terraseg evaluate``. Returns the
    best candidate (the lowest on a tie) and the F1 of every candidate and of 0
    (every building kept).
    """
    import geopandas as gpd

    out = workdir / f"minscore-{Path(model).stem}-{scene.stem}"
    result = predict_to_dir(scene, out, model=str(model), chunk_px=chunk_px, device="cpu",
                            write_probabilities=True, overwrite=True, show_progress=False,
                            min_score=0.0)
    vectorize_scene(result.classes_path, out / "instances.tif", out, scene_name=scene.stem,
                    chunk_px=chunk_px, probabilities_path=result.probabilities_path,
                    overwrite=True)
    buildings = gpd.read_file(out / f"{scene.stem}.gpkg", layer="buildings")
    f1: dict[float, float] = {}
    for s in (0.0, *grid):
        kept = out / f"kept-{s:.2f}.gpkg"
        buildings[buildings["score"] >= s].to_file(kept, layer="buildings", driver="GPKG")
        b = evaluate(kept, truth, task="buildings").buildings
        assert b is not None
        f1[s] = round(float(b.f1), 4)
    return max(grid, key=lambda s: (f1[s], -s)), f1


def record_min_score(stem: Path, scene: Path, truth: Path, workdir: Path) -> float:
    """:func:`choose_min_score` on validation ``scene``, kept as the card's ``building_min_score``.

    The card's ``val_min_score_f1`` is the validation F1 at the chosen value and
    ``val_min_score_f1_keep_all`` without a threshold; its evaluation text says so.
    """
    from terraseg.models.card import load_card, save_card

    card_path = stem.with_name(f"{stem.name}.card.yaml")
    best, f1 = choose_min_score(stem.with_suffix(".safetensors"), scene, truth, workdir)
    card = load_card(card_path)
    before, eval_sep, eval_note = (card.evaluation or "").partition("; eval_*:")
    evaluation = before.split("; building_min_score:")[0]
    note = (f"building_min_score: {best:g}, the value of {MIN_SCORE_GRID[0]:g}-"
            f"{MIN_SCORE_GRID[-1]:g} (step 0.05) with the best building F1@0.5 on the "
            f"validation scene {scene.name} ({f1[best]:.4f}; {f1[0.0]:.4f} keeping every "
            "building); buildings scoring below it are left out of the vectors")
    card = card.model_copy(update={
        "building_min_score": best,
        "metrics": {**card.metrics, "val_min_score_f1": f1[best],
                    "val_min_score_f1_keep_all": f1[0.0]},
        "evaluation": f"{evaluation}; {note}{eval_sep}{eval_note}",
    })
    save_card(card, card_path, overwrite=True)
    print(f"{card_path}: building_min_score {best:g} (validation F1 by value: {f1})", flush=True)
    return best


def record_evaluation(stem: Path, scene: Path, workdir: Path) -> None:
    """Measure ``<stem>.safetensors`` on ``scene`` and store the ``eval_*`` figures in its card.

    Earlier ``eval_*`` figures and their sentence are replaced; the rest of the
    card (training figures, provenance) is kept.
    """
    from terraseg.models.card import load_card, save_card

    metrics, note = evaluate_buildings(stem.with_suffix(".safetensors"), scene, workdir)
    card_path = stem.with_name(f"{stem.name}.card.yaml")
    card = load_card(card_path)
    evaluation = (card.evaluation or "").split("; eval_*:")[0]
    card = card.model_copy(
        update={"metrics": {**card.metrics, **metrics}, "evaluation": f"{evaluation}; {note}"}
    )
    save_card(card, card_path, overwrite=True)
    print(f"{card_path}: {card.metrics}")


def record_figures(stem: Path, val_scene: Path, eval_scene: Path, workdir: Path) -> None:
    """:func:`record_min_score` on the validation scene, then :func:`record_evaluation`
    on the evaluation scene (so the ``eval_*`` figures use the chosen threshold)."""
    record_min_score(stem, val_scene, val_scene.with_name(f"{val_scene.stem}.truth.gpkg"),
                     workdir)
    record_evaluation(stem, eval_scene, workdir)
