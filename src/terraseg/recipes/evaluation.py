"""Measure a bundled model the way a user runs it: predict, instances, vectors, evaluate.

The same library calls as ``terraseg predict SCENE --model M`` followed by
``terraseg evaluate OUT/<scene>.gpkg <scene>.truth.gpkg`` and ``terraseg evaluate
OUT/classes.tif <scene>.truth.tif``, so the figures in a card are the figures a
user gets.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

from terraseg.api import predict_to_dir
from terraseg.engine.postprocess import vectorize_scene
from terraseg.evaluate.scores import evaluate
from terraseg.instances.merge import BOUNDARY_SEED_P

__all__ = ["MIN_AREA_GRID", "MIN_SCORE_GRID", "SPLIT_GRID", "choose_building_filters",
           "evaluate_buildings", "record_building_filters", "record_evaluation",
           "record_figures"]

MIN_SCORE_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""Candidate ``building_min_score`` values (0.50 ... 0.95; and 0) of
:func:`choose_building_filters`."""
MIN_AREA_GRID = (4.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0)
"""Candidate ``building_min_area_m2`` values (4 m², the engine's default, up to a small shed)."""
DEFAULT_SPLIT = ("edge", BOUNDARY_SEED_P)
"""The engine's watershed of a boundary model: seeds at interior p >= 0.6
(:data:`~terraseg.instances.merge.BOUNDARY_SEED_P`), flooded through the edge probability."""
SPLIT_GRID = tuple((landscape, seed) for landscape in ("edge", "distance")
                   for seed in (0.6, 0.7, 0.8))
"""Candidate ``(building_landscape, building_seed_p)`` of a boundary model (with
``splits=SPLIT_GRID``). A higher seed threshold splits two touching houses whose
interiors the model only half separates (their confident cores are apart), but loses
faint buildings' seeds; the distance landscape shares a contact half way between seeds
where the edge probability is flat."""

Key = tuple[float, float, str, float]
"""``(building_min_score, building_min_area_m2, building_landscape, building_seed_p)``."""


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


def choose_building_filters(
    model: str | Path, scene: Path | Sequence[Path], truth: Path | Sequence[Path],
    workdir: Path, *, chunk_px: int = 2048, max_count_error: float | None = None,
    splits: Sequence[tuple[str, float]] = (DEFAULT_SPLIT,),
) -> tuple[Key, dict[Key, tuple[float, float]]]:
    """The ``(building_min_score, building_min_area_m2, building_landscape,
    building_seed_p)`` with the best building F1@0.5 on validation data: scores 0 and
    :data:`MIN_SCORE_GRID` by :data:`MIN_AREA_GRID` by ``splits`` (a boundary model's
    watersheds, e.g. :data:`SPLIT_GRID`; other models ignore them: keep the default).

    ``scene`` is validation data (never the test scene), one scene or several with
    one ``truth`` each. Each is predicted once (``terraseg predict``, probabilities
    kept); its buildings are finished once per watershed and minimum area, exactly as
    the engine finishes them, and those scoring at least each minimum score are scored
    against the truth with ``terraseg evaluate``. Several scenes are pooled: matches,
    predicted and true buildings are summed over them before F1 (so a place with
    more buildings weighs more, and no single place picks the settings). Returns the
    best (on a tie the default watershed, then the filters that drop least) and the F1
    and count ratio (predicted / true) of every candidate; ``(0, 4, "edge", 0.6)`` is
    the engine's default. With ``max_count_error`` only candidates whose count ratio is
    within it of 1 compete (the defaults when none is).
    """
    from terraseg.engine.postprocess import finish_scene

    scenes = [scene] if isinstance(scene, Path) else list(scene)
    truths = [truth] if isinstance(truth, Path) else list(truth)
    if len(scenes) != len(truths):
        raise ValueError(f"{len(scenes)} validation scenes but {len(truths)} truth files")
    counts: dict[Key, list[int]] = {}  # tp, predicted, true
    for one, one_truth in zip(scenes, truths, strict=True):
        out = workdir / f"filters-{Path(model).stem}-{one.stem}"
        result = predict_to_dir(one, out, model=str(model), chunk_px=chunk_px, device="cpu",
                                write_probabilities=True, overwrite=True, show_progress=False,
                                min_score=0.0, min_area_m2=0.0)
        for (landscape, seed), area in itertools.product(splits, MIN_AREA_GRID):
            buildings = finish_scene(
                result.classes_path, out / "instances-candidate.tif", chunk_px=chunk_px,
                probabilities_path=result.probabilities_path, overwrite=True, min_area_m2=area,
                seed_p=seed, landscape=landscape,
            ).layers.buildings
            for score in (0.0, *MIN_SCORE_GRID):
                kept = out / "kept-candidate.gpkg"
                buildings[buildings["score"] >= score].to_file(kept, layer="buildings",
                                                              driver="GPKG")
                b = evaluate(kept, one_truth, task="buildings").buildings
                assert b is not None
                total = counts.setdefault((score, area, landscape, seed), [0, 0, 0])
                total[0] += b.tp
                total[1] += b.n_pred
                total[2] += b.n_truth
    found = {k: (round(2 * tp / max(n_pred + n_truth, 1), 4), round(n_pred / max(n_truth, 1), 4))
             for k, (tp, n_pred, n_truth) in counts.items()}
    default = (0.0, 4.0, *splits[0])
    allowed = [k for k, (_, ratio) in found.items()
               if max_count_error is None or abs(ratio - 1) <= max_count_error] or [default]
    best = max(allowed, key=lambda k: (found[k][0], k[2:] == DEFAULT_SPLIT, -k[0], -k[1]))
    return best, found


def record_building_filters(stem: Path, scene: Path | Sequence[Path],
                            truth: Path | Sequence[Path], workdir: Path, *,
                            max_count_error: float | None = None,
                            splits: Sequence[tuple[str, float]] = (DEFAULT_SPLIT,)) -> None:
    """:func:`choose_building_filters` on validation ``scene`` (or scenes, pooled), kept in
    the card as ``building_min_score``, ``building_min_area_m2`` and (when ``splits``
    offers a choice) ``building_landscape`` and ``building_seed_p``.

    The card's ``val_filters_f1`` is the validation F1 with them and
    ``val_filters_f1_default`` with the engine's defaults (``val_filters_count_ratio``
    and ``val_filters_count_ratio_default`` their count ratios); its evaluation text
    says so.
    """
    from terraseg.models.card import load_card, save_card

    card_path = stem.with_name(f"{stem.name}.card.yaml")
    best, found = choose_building_filters(
        stem.with_suffix(".safetensors"), scene, truth, workdir,
        max_count_error=max_count_error, splits=splits)
    score, area, landscape, seed = best
    (f1, ratio), (f1_0, ratio_0) = found[best], found[(0.0, 4.0, *splits[0])]
    rule = ("" if max_count_error is None else
            f" among those that keep the predicted count within {max_count_error:.0%} of the "
            "true count")
    scenes = [scene] if isinstance(scene, Path) else list(scene)
    names = (f"scene {scenes[0].name}" if len(scenes) == 1 else
             f"scenes {', '.join(one.name for one in scenes)} (pooled)")
    watershed, update = "", {}
    if len(splits) > 1:
        watershed = (f", building_landscape {landscape} and building_seed_p {seed:g} (the "
                     f"watershed, of {', '.join(f'{w} {p:g}' for w, p in splits)})")
        update = {"building_landscape": landscape,
                  "building_seed_p": None if seed == DEFAULT_SPLIT[1] else seed}
        if landscape == "edge" and seed == DEFAULT_SPLIT[1]:
            watershed += " (the engine's default)"
    card = load_card(card_path)
    before, eval_sep, eval_note = (card.evaluation or "").partition("; eval_*:")
    evaluation = before.split("; building filters:")[0]
    note = (f"building filters: building_min_score {score:g} and building_min_area_m2 "
            f"{area:g}{watershed}, the candidate of 0 or {MIN_SCORE_GRID[0]:g}-"
            f"{MIN_SCORE_GRID[-1]:g} (step 0.05) by {'/'.join(f'{a:g}' for a in MIN_AREA_GRID)} "
            f"m2 with the best building F1@0.5{rule} on the validation {names} (F1 {f1:.4f}, "
            f"count ratio {ratio:.3f}; {f1_0:.4f} and {ratio_0:.3f} with the defaults 0 and "
            "4 m2); buildings scoring below the one or smaller than the other are left out "
            "of the vectors")
    card = card.model_copy(update={
        "building_min_score": score, "building_min_area_m2": area, **update,
        "metrics": {**card.metrics, "val_filters_f1": f1, "val_filters_f1_default": f1_0,
                    "val_filters_count_ratio": ratio,
                    "val_filters_count_ratio_default": ratio_0},
        "evaluation": f"{evaluation}; {note}{eval_sep}{eval_note}",
    })
    save_card(card, card_path, overwrite=True)
    print(f"{card_path}: building_min_score {score:g}, building_min_area_m2 {area:g}"
          f"{watershed} (validation F1 {f1:.4f}, count ratio {ratio:.3f}; defaults "
          f"{f1_0:.4f}, {ratio_0:.3f})", flush=True)


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
    """:func:`record_building_filters` on the validation scene, then :func:`record_evaluation`
    on the evaluation scene (so the ``eval_*`` figures use the chosen filters).

    The synthetic demo models must count buildings within 5 % (the instances issue), so
    only filters that keep the validation count within 5 % of the truth compete.
    """
    record_building_filters(stem, val_scene, val_scene.with_name(f"{val_scene.stem}.truth.gpkg"),
                            workdir, max_count_error=0.05)
    record_evaluation(stem, eval_scene, workdir)
