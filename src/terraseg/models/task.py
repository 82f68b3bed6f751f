"""The Lightning side of training: torchgeo's task with the card's network, fit and scored.

torchgeo's ``SemanticSegmentationTask`` trains under a Lightning ``Trainer``
with the card's smp architecture (nothing is downloaded: encoders are built
with random weights) and a one-cycle AdamW schedule; the trained network is
then scored by per-class pixel IoU on the held-out patches. The card's
``training`` section records the hardware and package versions.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from terraseg.config import TrainConfig
from terraseg.models.card import Architecture, ModelCard
from terraseg.models.networks import build_network
from terraseg.models.spec import IGNORE_LABEL, ClassInfo

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from torchgeo.trainers import SemanticSegmentationTask

    from terraseg.models.datasets import Batch

__all__ = [
    "FitResult",
    "confusion_matrix",
    "fit_network",
    "hardware",
    "iou_metrics",
    "quiet",
    "resolve_accelerator",
    "resolve_precision",
    "versions",
]


@dataclass(frozen=True, slots=True)
class FitResult:
    """The trained network (CPU, eval mode) and how far training went."""

    net: nn.Module
    steps: int
    epochs: int
    precision: str = "32"  # Lightning's precision the run trained with


def _task_class() -> Callable[..., SemanticSegmentationTask]:
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import OneCycleLR
    from torchgeo.trainers import SemanticSegmentationTask

    if TYPE_CHECKING:
        from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

    class TerrasegSegmentationTask(SemanticSegmentationTask):
        """torchgeo's task with the card's architecture and a one-cycle schedule."""

        def __init__(
            self,
            *,
            terraseg_card: dict[str, Any],
            total_steps: int,
            channels_last: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)  # saves the three above as hyper-parameters

        def configure_losses(self) -> None:
            """The loss of :func:`terraseg.models.losses.build_loss` (all skip ignore_index)."""
            from terraseg.models.losses import build_loss

            self.criterion = Float32Loss(build_loss(
                self.hparams["loss"],
                ignore_index=self.hparams["ignore_index"],
                class_weights=self.hparams["class_weights"],
            ))

        def configure_models(self) -> None:
            arch = Architecture.model_validate(self.hparams["terraseg_card"]["architecture"])
            self.model = build_network(arch, source="the training architecture")

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            """Channels-last images under mixed precision (the fast layout for oneDNN/cuDNN)."""
            if self.hparams.get("channels_last") and isinstance(batch, dict):
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            return batch

        def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
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


class Float32Loss(nn.Module):
    """``loss`` computed in float32 outside autocast (mixed precision: Lovász's dot products
    and Dice's sums need one dtype and full precision)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pred.device.type, enabled=False):
            out: torch.Tensor = self.loss(pred.float(), target)
        return out


def fit_network(
    card: ModelCard,
    train_loader: DataLoader[Batch],
    cfg: TrainConfig,
    *,
    total_steps: int,
    n_epochs: int,
    workdir: Path,
    init_state: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    resume_from: Path | None = None,
) -> FitResult:
    """Train ``card``'s network on ``train_loader`` for ``total_steps`` (no validation loop).

    ``init_state`` (a state dict of the same architecture) replaces the random
    initial weights: fine-tuning. ``callbacks`` are more Lightning callbacks
    (the per-epoch validation of :mod:`terraseg.models.records`). ``resume_from``
    continues a paused run (:mod:`terraseg.models.resume`), read with
    ``weights_only=True``.
    """
    import lightning.pytorch as pl

    accelerator = resolve_accelerator(cfg.accelerator)
    precision = resolve_precision(cfg.precision, accelerator)
    task = _task_class()(
        terraseg_card=card.model_dump(mode="json"),
        total_steps=total_steps,
        channels_last=precision != "32",
        model="unet",
        backbone=str(card.architecture.kwargs.get("encoder_name", "resnet18")),
        weights=None,
        in_channels=card.input.n_bands,
        num_classes=card.n_classes,
        loss=cfg.loss,
        ignore_index=IGNORE_LABEL,  # unlabelled pixels (labelling layers, label extents)
        class_weights=list(cfg.class_weights) if cfg.class_weights is not None else None,
        lr=cfg.lr,
    )
    if init_state is not None:
        task.model.load_state_dict(init_state)
    if precision != "32":
        task.model.to(memory_format=torch.channels_last)
    # --progress: Lightning's bar on a terminal, plain lines in a log (its bar would not show)
    bar = cfg.progress and sys.stderr.isatty()
    callbacks = [*callbacks, *([_plain_progress(total_steps)] if cfg.progress and not bar else [])]
    with quiet():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_epochs=n_epochs,
            max_steps=total_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=bar,
            callbacks=callbacks,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            # CUDA has no deterministic bilinear-upsampling backward: warn there, not fail
            deterministic=True if accelerator == "cpu" else "warn",
            default_root_dir=str(workdir),
        )
        trainer.fit(task, train_dataloaders=train_loader, weights_only=True,
                    ckpt_path=str(resume_from) if resume_from is not None else None)
    net = task.model.cpu().eval().to(memory_format=torch.contiguous_format)
    return FitResult(net, int(trainer.global_step), int(trainer.current_epoch), precision)


def _plain_progress(total_steps: int) -> Any:
    """A Lightning callback writing :class:`~terraseg.progress.PlainProgress` lines of steps."""
    from lightning.pytorch.callbacks import Callback

    from terraseg.progress import PlainProgress

    class PlainProgressCallback(Callback):
        def __init__(self) -> None:
            self.lines = PlainProgress("train", unit="step")

        def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            self.lines.update(int(trainer.global_step), total_steps)

    return PlainProgressCallback()


def confusion_matrix(
    net: nn.Module,
    loader: Iterable[Batch],
    n_classes: int,
    ignore: int | None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> np.ndarray:
    """``n_classes²`` counts of (true, predicted) pixels over ``loader``'s batches.

    ``on_batch(logits, mask)`` (CPU tensors) sees every batch too, e.g. to count
    building instances in the same pass.
    """
    cm = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    net.eval()
    with torch.inference_mode():
        for batch in loader:
            logits = net(batch["image"].to(device)).cpu()
            if on_batch is not None:
                on_batch(logits, batch["mask"])
            pred = logits.argmax(1).flatten()
            true = batch["mask"].flatten()
            keep = (true >= 0) & (true < n_classes)
            if ignore is not None:
                keep &= true != ignore
            cm += torch.bincount(
                true[keep] * n_classes + pred[keep], minlength=n_classes * n_classes
            ).view(n_classes, n_classes)
    return cm.numpy()


def iou_metrics(cm: np.ndarray, classes: Sequence[ClassInfo], prefix: str) -> dict[str, float]:
    """Per-class IoU, mean IoU and pixel accuracy of a confusion matrix, rounded to 4 digits."""
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


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"``: ``"gpu"`` when torch sees a CUDA device, else ``"cpu"``; others unchanged."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), not emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


Precision = Literal["32", "bf16-mixed", "16-mixed"]


def resolve_precision(precision: str, accelerator: str) -> Precision:
    """Lightning's ``precision`` for ``precision`` on the resolved ``accelerator``.

    ``"auto"``: ``"bf16-mixed"`` on a GPU with bfloat16 and on a CPU that has it natively,
    ``"16-mixed"`` on an older GPU, else ``"32"``. ``"16-mixed"`` needs a GPU.
    """
    from terraseg.errors import ConfigError

    gpu = accelerator != "cpu"
    if precision == "auto":
        if gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if native_cpu_bf16() else "32"
    if precision == "16-mixed" and not gpu:
        raise ConfigError(
            "precision 16-mixed needs a GPU (float16 autocast is emulated on CPUs); use "
            "--precision bf16-mixed or 32 on the CPU"
        )
    if precision == "bf16-mixed":
        return "bf16-mixed"
    return "16-mixed" if precision == "16-mixed" else "32"


def hardware(accelerator: str) -> str:
    """One line about the machine that trained (CPU threads or the CUDA device)."""
    accelerator = resolve_accelerator(accelerator)
    if accelerator == "cpu" or not torch.cuda.is_available():
        return f"cpu x{torch.get_num_threads()} threads ({platform.machine()})"
    return f"{accelerator}: {torch.cuda.get_device_name(0)}"


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape a trained model."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    pkgs = ("terraseg", "torch", "torchgeo", "segmentation-models-pytorch", "timm", "lightning")
    for pkg in pkgs:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
