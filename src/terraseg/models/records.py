"""The training record: validation after every epoch, ``metrics.csv``, best weights, early stop.

After each training epoch the network is scored on the held-out patches
(per-class pixel IoU, mean IoU, pixel accuracy: :func:`terraseg.models.task.iou_metrics`;
for a ``boundary`` model also building F1@0.5 of the instances per patch,
:class:`InstanceCounts`), and one row is appended to ``<out>.metrics.csv`` (``epoch, step, seconds,
train_loss, val_*``). The weights of the epoch with the best ``monitor``
metric are kept (a CPU copy) and are the ones saved; after ``patience``
epochs without a better value training stops. A NaN metric (a class absent
from the held-out area) never counts as better.

With ``progress``, each epoch also prints one plain line to stderr, e.g.
``epoch 3/10 (step 300/1000): train_loss 0.412, val_miou 0.613 (best)``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from terraseg.models.spec import IGNORE_LABEL, ClassInfo
from terraseg.models.task import confusion_matrix, iou_metrics

if TYPE_CHECKING:
    from terraseg.models.datasets import Batch

__all__ = ["EpochRecord", "TrainingRecord", "metric_names", "training_record"]

log = logging.getLogger(__name__)


def metric_names(classes: Sequence[ClassInfo]) -> list[str]:
    """The validation metrics of each epoch (the values ``monitor`` may take).

    With a ``building edge`` class (task ``boundary``) also ``val_f1_building``.

    Examples
    --------
    >>> from terraseg.models.spec import DEFAULT_CLASSES
    >>> metric_names(DEFAULT_CLASSES[:2])
    ['val_iou_background', 'val_iou_building', 'val_miou', 'val_pixel_accuracy']
    """
    names = [*(f"val_iou_{c.name}" for c in classes), "val_miou", "val_pixel_accuracy"]
    return [*names, "val_f1_building"] if _edge_ids(classes) else names


def _edge_ids(classes: Sequence[ClassInfo]) -> tuple[int, int] | None:
    ids = {c.name: c.id for c in classes}
    if "building" in ids and "building edge" in ids:
        return ids["building"], ids["building edge"]
    return None


class InstanceCounts:
    """Building instances matched at IoU ≥ 0.5 per validation patch (SpaceNet rule, in pixels).

    Predicted instances come from the seeded watershed of the predicted
    probabilities, true ones from the class labels (interior and edge ring), as
    :func:`~terraseg.instances.watershed.instances_from_boundary` makes them at
    predict time. A building cut by the patch border counts as the part inside;
    predicted instances mostly on unlabelled pixels are left out.
    """

    def __init__(self, interior: int, edge: int) -> None:
        self.interior, self.edge = interior, edge
        self.tp = self.n_pred = self.n_true = 0

    def __call__(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        from terraseg.instances.watershed import instances_from_boundary

        probs = logits.float().softmax(1).numpy()
        labels = mask.numpy()
        for k in range(len(labels)):
            pred = instances_from_boundary(
                probs[k], interior_class=self.interior, edge_class=self.edge
            )
            true = instances_from_boundary(
                labels[k].astype(np.int64), interior_class=self.interior, edge_class=self.edge
            )
            self._match(pred, true, labels[k] == IGNORE_LABEL)

    def _match(self, pred: np.ndarray, true: np.ndarray, ignored: np.ndarray) -> None:
        n_p, n_t = int(pred.max()), int(true.max())
        area_p = np.bincount(pred.ravel(), minlength=n_p + 1)
        off = np.bincount(pred[ignored], minlength=n_p + 1)
        counted = (off * 2 <= area_p)[1:]  # instances mostly on labelled pixels
        area_t = np.bincount(true.ravel(), minlength=n_t + 1)
        both = (pred > 0) & (true > 0)
        pairs, inter = np.unique(
            pred[both].astype(np.int64) * (n_t + 1) + true[both], return_counts=True
        )
        p_id, t_id = pairs // (n_t + 1), pairs % (n_t + 1)
        iou = inter / (area_p[p_id] + area_t[t_id] - inter)
        used_p: set[int] = set()
        used_t: set[int] = set()
        for j in np.argsort(-iou, kind="stable"):  # one-to-one (IoU = 0.5 could pair twice)
            if iou[j] < 0.5:
                break
            if int(p_id[j]) not in used_p and int(t_id[j]) not in used_t:
                used_p.add(int(p_id[j]))
                used_t.add(int(t_id[j]))
        self.tp += len(used_p)
        self.n_pred += int(counted.sum())
        self.n_true += n_t

    def f1(self) -> float:
        denom = self.n_pred + self.n_true
        return round(2 * self.tp / denom, 4) if denom else float("nan")


@dataclass(slots=True)
class EpochRecord:
    """One epoch's row of ``metrics.csv``."""

    epoch: int
    step: int
    seconds: float
    train_loss: float
    metrics: dict[str, float]

    def row(self) -> dict[str, float | int]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seconds": round(self.seconds, 1),
            "train_loss": round(self.train_loss, 5),
            **self.metrics,
        }


@dataclass(slots=True)
class TrainingRecord:
    """What the recorder saw: every epoch, the best one and its weights (CPU)."""

    monitor: str
    epochs: list[EpochRecord] = field(default_factory=list)
    best: EpochRecord | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False

    def is_better(self, value: float) -> bool:
        """``value`` of the monitor beats the best so far (the first epoch always does)."""
        if self.best is None:
            return True
        if math.isnan(value):
            return False
        best = self.best.metrics[self.monitor]
        return math.isnan(best) or value > best


    def state(self) -> dict[str, Any]:
        """Every epoch, the best one and its weights, as ``torch.load(weights_only=True)`` reads."""
        return {
            "epochs": json.dumps([_epoch_values(r) for r in self.epochs]),
            "best": self.epochs.index(self.best) if self.best is not None else -1,
            "best_state": self.best_state or {},
        }

    def restore(self, state: dict[str, Any], csv_path: Path, header: Sequence[str]) -> None:
        """Take back :meth:`state` and rewrite ``csv_path`` with its rows."""
        self.epochs[:] = [EpochRecord(**r) for r in json.loads(state["epochs"])]
        best = int(state["best"])
        self.best = self.epochs[best] if best >= 0 else None
        self.best_state = dict(state["best_state"]) or None
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, header)
            writer.writeheader()
            writer.writerows(r.row() for r in self.epochs)


def training_record(
    val_loader: Iterable[Batch],
    classes: Sequence[ClassInfo],
    *,
    monitor: str,
    patience: int | None,
    csv_path: Path,
    total_steps: int,
    n_epochs: int,
    progress: bool,
) -> tuple[Any, TrainingRecord]:
    """A Lightning callback that validates after each epoch, and the record it fills.

    ``csv_path`` gets a header and one row per epoch as training goes (flushed,
    so a long run can be watched).
    """
    from lightning.pytorch.callbacks import Callback

    record = TrainingRecord(monitor)
    names = metric_names(classes)
    header = ["epoch", "step", "seconds", "train_loss", *names]

    class EpochValidation(Callback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.loss_sum = 0.0
            self.loss_n = 0
            self.validated_step = -1
            with open(csv_path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(header)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.loss_sum, self.loss_n = 0.0, 0

        def state_dict(self) -> dict[str, Any]:
            """The record so far, for a paused run (:mod:`terraseg.models.resume`)."""
            return {**record.state(), "seconds": time.perf_counter() - self.t0,
                    "validated_step": self.validated_step}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            record.restore(state, csv_path, header)
            self.t0 = time.perf_counter() - float(state["seconds"])
            self.validated_step = int(state["validated_step"])

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, *args: Any
        ) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                self.loss_sum += float(loss.detach())
                self.loss_n += 1

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._validate(trainer, pl_module)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._validate(trainer, pl_module)  # a last, partial epoch (max_steps mid-epoch)

        def _validate(self, trainer: Any, pl_module: Any) -> None:
            step = int(trainer.global_step)
            if step == self.validated_step:
                return
            self.validated_step = step
            net = pl_module.model
            was_training = net.training
            edges = _edge_ids(classes)
            counts = InstanceCounts(*edges) if edges else None
            cm = confusion_matrix(net, val_loader, len(classes), IGNORE_LABEL, counts)
            net.train(was_training)
            metrics = iou_metrics(cm, classes, "val_")
            if counts is not None:
                metrics["val_f1_building"] = counts.f1()
            rec = EpochRecord(
                epoch=len(record.epochs) + 1,
                step=step,
                seconds=time.perf_counter() - self.t0,
                train_loss=self.loss_sum / self.loss_n if self.loss_n else float("nan"),
                metrics=metrics,
            )
            record.epochs.append(rec)
            better = record.is_better(metrics[monitor])
            if better:
                record.best = rec
                record.best_state = {
                    k: v.detach().cpu().clone() for k, v in net.state_dict().items()
                }
            with open(csv_path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, header).writerow(rec.row())
            line = _epoch_line(rec, n_epochs, total_steps, monitor, best=better)
            log.info("%s", line)
            if progress:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            best_epoch = record.best.epoch if record.best is not None else rec.epoch
            if patience is not None and rec.epoch - best_epoch >= patience:
                record.stopped_early = True
                trainer.should_stop = True

    return EpochValidation(), record


def _epoch_values(rec: EpochRecord) -> dict[str, Any]:
    """An epoch's record as plain values (JSON)."""
    return {"epoch": rec.epoch, "step": rec.step, "seconds": rec.seconds,
            "train_loss": rec.train_loss, "metrics": rec.metrics}


def _epoch_line(
    rec: EpochRecord, n_epochs: int, total_steps: int, monitor: str, *, best: bool
) -> str:
    """``epoch 3/10 (step 300/1000): train_loss 0.412, val_miou 0.613 (best), ...``."""
    shown = [
        monitor,
        *(k for k in ("val_miou", "val_iou_building", "val_f1_building") if k != monitor),
    ]
    parts = [f"train_loss {rec.train_loss:.4f}"]
    for key in shown:
        if key in rec.metrics:
            parts.append(
                f"{key} {rec.metrics[key]:.4f}" + (" (best)" if best and key == monitor else "")
            )
    return (
        f"epoch {rec.epoch}/{n_epochs} (step {rec.step}/{total_steps}, "
        f"{rec.seconds:.0f} s): {', '.join(parts)}"
    )
