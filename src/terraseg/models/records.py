"""The training record: validation after every epoch, ``metrics.csv``, best weights, early stop.

After each training epoch the network is scored on the held-out patches
(per-class pixel IoU, mean IoU, pixel accuracy: :func:`terraseg.models.task.iou_metrics`),
and one row is appended to ``<out>.metrics.csv`` (``epoch, step, seconds,
train_loss, val_*``). The weights of the epoch with the best ``monitor``
metric are kept (a CPU copy) and are the ones saved; after ``patience``
epochs without a better value training stops. A NaN metric (a class absent
from the held-out area) never counts as better.

With ``progress``, each epoch also prints one plain line to stderr, e.g.
``epoch 3/10 (step 300/1000): train_loss 0.412, val_miou 0.613 (best)``.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from terraseg.models.spec import IGNORE_LABEL, ClassInfo
from terraseg.models.task import confusion_matrix, iou_metrics

if TYPE_CHECKING:
    from terraseg.models.datasets import Batch

__all__ = ["EpochRecord", "TrainingRecord", "metric_names", "training_record"]

log = logging.getLogger(__name__)


def metric_names(classes: Sequence[ClassInfo]) -> list[str]:
    """The validation metrics of each epoch (the values ``monitor`` may take).

    Examples
    --------
    >>> from terraseg.models.spec import DEFAULT_CLASSES
    >>> metric_names(DEFAULT_CLASSES[:2])
    ['val_iou_background', 'val_iou_building', 'val_miou', 'val_pixel_accuracy']
    """
    return [*(f"val_iou_{c.name}" for c in classes), "val_miou", "val_pixel_accuracy"]


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
            cm = confusion_matrix(net, val_loader, len(classes), IGNORE_LABEL)
            net.train(was_training)
            metrics = iou_metrics(cm, classes, "val_")
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


def _epoch_line(
    rec: EpochRecord, n_epochs: int, total_steps: int, monitor: str, *, best: bool
) -> str:
    """``epoch 3/10 (step 300/1000): train_loss 0.412, val_miou 0.613 (best), ...``."""
    shown = [monitor, *(k for k in ("val_miou", "val_iou_building") if k != monitor)]
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
