"""Training in several runs: ``max_minutes`` pauses a run, ``resume`` continues it.

With ``max_minutes`` a run stops after the first epoch that ends past that many
minutes (once the epoch is validated), writes its whole state to
``<out>.resume.ckpt`` (under a temporary name, then renamed) and raises
:class:`~terraseg.errors.TrainingPaused`: the network, optimiser and
learning-rate schedule, Lightning's loop counters, the training record (every
epoch's metrics, the best epoch's weights, the early-stop count), the time
spent, and the random generators of the samplers and augmentations. The same
settings with ``resume`` continue from it, and a run paused and resumed gives
the same weights and ``metrics.csv`` as one that was not (tested; with
``num_workers=0``: worker processes draw their own augmentations, and resumed
workers start their generators afresh, so with workers a resumed run is the
same training but not the same bits).
The state is written after every epoch (not only at a pause), so a run that
dies or is killed resumes from its last finished epoch, to the same result.

The file is read with ``torch.load(weights_only=True)``: it holds tensors,
numbers, strings and containers only, and can run no code. It also holds the
run's *fingerprint* (the settings and data paths that decide the result), and
a resume with other settings is refused (:class:`~terraseg.errors.ResumeMismatchError`)
rather than mixing two configurations in one model. Finishing the run writes
the outputs and removes the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraseg.errors import ConfigError, ResumeMismatchError, TrainingPaused
from terraseg.models.records import EpochRecord
from terraseg.train_config import TrainConfig

__all__ = ["RESUME_SUFFIX", "PauseState", "check_resume", "fingerprint", "pause_callback",
           "state_file"]

RESUME_SUFFIX = ".resume.ckpt"
"""An unfinished run's state, after its last finished epoch: ``<out>.resume.ckpt``."""


def state_file(out: str | os.PathLike[str]) -> Path:
    """Where the run writing ``out`` (a stem, or its ``.safetensors``) keeps its state."""
    p = Path(out)
    stem = p.stem if p.suffix == ".safetensors" else p.name
    return p.with_name(stem + RESUME_SUFFIX)

_NOT_IN_FINGERPRINT = ("resume", "max_minutes", "progress", "command", "num_workers")
"""Settings that do not change what is learnt (how the run is driven and recorded)."""


def fingerprint(cfg: TrainConfig, *paths: Sequence[str | os.PathLike[str]] | None) -> str:
    """The settings and input paths that decide a run's result, as canonical JSON."""
    settings = cfg.model_dump(mode="json", exclude=set(_NOT_IN_FINGERPRINT))
    files = [[str(Path(p).resolve()) for p in group] if group else None for group in paths]
    return json.dumps({"settings": settings, "files": files}, sort_keys=True)


def check_resume(
    path: Path, cfg: TrainConfig, run_print: str, *, overwrite: bool
) -> bool:
    """Whether the run continues a paused state (``cfg.resume``, checked) or starts afresh.

    Raises
    ------
    ConfigError
        ``resume`` without a state file, or a state file that cannot be read.
    OutputExistsError
        A state file exists, and neither ``resume`` nor ``overwrite`` is given.
    ResumeMismatchError
        The state was made with other settings or data (the message names them).
    """
    from terraseg.errors import OutputExistsError

    if not cfg.resume:
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"'{path}' holds an unfinished training run; pass --resume (resume=True) to "
                "continue it, or --overwrite to start again",
                path=path,
            )
        path.unlink(missing_ok=True)
        return False
    if not path.exists():
        raise ConfigError(
            f"nothing to resume: '{path}' does not exist; run without --resume to start "
            "training",
            path=path,
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(ckpt["callbacks"][PauseState.__qualname__]["fingerprint"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        raise ConfigError(
            f"cannot resume from '{path}': not a readable training state "
            f"({type(exc).__name__}); delete it and train again without --resume",
            path=path,
        ) from None
    given = json.loads(run_print)
    if stored != given:
        differ = sorted(
            k for k in {*stored["settings"], *given["settings"]}
            if stored["settings"].get(k) != given["settings"].get(k)
        ) + (["the training or validation files"] if stored["files"] != given["files"] else [])
        raise ResumeMismatchError(
            f"cannot resume from '{path}': it was started with other settings "
            f"({', '.join(differ)}); give the same settings, or --overwrite to start again",
            path=path,
        )
    return True


class PauseState:
    """What the pause callback carries across runs (its Lightning ``state_dict``)."""

    def __init__(self, fingerprint: str, runs: int = 1, minutes: float | None = None) -> None:
        self.fingerprint = fingerprint
        self.runs = runs
        self.minutes = minutes
        self.paused = False
        self.before = 0.0
        """Seconds the earlier runs took (restored on resume)."""

    def pause_error(self, last: EpochRecord, path: Path) -> TrainingPaused:
        """What a paused run raises: where it stopped and how to go on."""
        return TrainingPaused(
            f"training paused after {self.minutes or 0:g} min at epoch {last.epoch} (step "
            f"{last.step}); continue it with the same settings and --resume (resume=True); "
            f"its state is in '{path}'",
            path=path,
        )


def _generator_states(loader: Any) -> list[torch.Tensor]:
    """The torch generators a training loader draws from: its samplers' (each once)."""
    return [g.get_state() for g in _generators(loader)]


def _generators(loader: Any) -> list[torch.Generator]:
    sampler = loader.sampler
    found: list[torch.Generator] = []
    for obj in [sampler, *getattr(sampler, "samplers", ())]:
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _clear_current(state: Any) -> None:
    """Zero every ``current`` progress counter under ``state`` (Lightning's loop state)."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "current" and isinstance(value, dict):
                for name in value:
                    value[name] = 0
            else:
                _clear_current(value)


def pause_callback(
    path: Path, state: PauseState, train_loader: Any, *, total_steps: int, resumed: bool
) -> Any:
    """A Lightning callback that saves the run after each epoch and pauses after ``minutes``."""
    from lightning.pytorch.callbacks import Callback

    t0 = time.monotonic()
    dataset = train_loader.dataset

    class _Pause(Callback):
        @property
        def state_key(self) -> str:
            return PauseState.__qualname__

        def state_dict(self) -> dict[str, Any]:
            rng = getattr(dataset, "rng", None)
            return {
                "fingerprint": state.fingerprint,
                "runs": state.runs,
                "seconds": state.before + time.monotonic() - t0,
                "generators": _generator_states(train_loader),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": json.dumps(rng.bit_generator.state) if rng is not None else "",
            }

        def load_state_dict(self, saved: dict[str, Any]) -> None:
            state.runs = int(saved["runs"]) + (1 if resumed else 0)
            state.before = float(saved["seconds"])
            for gen, value in zip(_generators(train_loader), saved["generators"], strict=True):
                gen.set_state(value)
            torch.set_rng_state(saved["torch_rng"])
            if saved["numpy_rng"]:
                dataset.rng = np.random.default_rng()
                dataset.rng.bit_generator.state = json.loads(saved["numpy_rng"])

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, ckpt: dict[str, Any]) -> None:
            # Saved once the epoch is trained and validated: record it as closed, and clear
            # the within-epoch counters as the next epoch's start would, so that Lightning
            # resumes at a new epoch (not inside this one).
            loop = ckpt["loops"]["fit_loop"]
            epochs = loop["epoch_progress"]
            for part in ("total", "current"):
                epochs[part]["completed"] = epochs[part]["processed"]
            _clear_current({k: v for k, v in loop.items() if k != "epoch_progress"})

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if int(trainer.global_step) >= total_steps or trainer.should_stop:
                return  # finished (or stopped early): the outputs are written instead
            tmp = path.with_name(path.name + ".tmp")  # every epoch: a killed run resumes too
            trainer.save_checkpoint(tmp)
            os.replace(tmp, path)
            if state.minutes is not None and time.monotonic() - t0 >= state.minutes * 60:
                state.paused = True
                trainer.should_stop = True

    return _Pause()
