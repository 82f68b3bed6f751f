"""Training in several runs: ``max_minutes`` pauses, ``resume`` continues to the same model."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from terraseg.errors import ConfigError, OutputExistsError, ResumeMismatchError, TrainingPaused
from terraseg.models.resume import RESUME_SUFFIX, state_file
from terraseg.models.train import train_semantic
from terraseg.synthetic import make_city

# three epochs of two steps, every augmentation that draws random numbers
RUN = {"max_steps": 6, "steps_per_epoch": 2, "batch_size": 2, "patch_px": 64, "seed": 1,
       "augment": "muted", "command": "terraseg train ..."}  # fmt: skip


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    path = tmp_path_factory.mktemp("city") / "city.tif"
    make_city(path, size_px=256, seed=3)
    return path, path.with_name("city.truth.gpkg")


def test_the_state_file_of_a_stem_and_of_its_weights_is_the_same() -> None:
    for out in ("a/m", "a/m.safetensors"):
        assert state_file(out) == Path(f"a/m{RESUME_SUFFIX}")
    assert state_file("a/m.v2") == Path(f"a/m.v2{RESUME_SUFFIX}")  # a dotted stem is kept


def _rows(path: Path) -> list[dict[str, str]]:
    """``metrics.csv`` rows without the wall-clock column."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_paused_twice_and_resumed_equals_one_run(
    city: tuple[Path, Path], tmp_path: Path
) -> None:
    image, labels = city
    whole = train_semantic(image, labels, tmp_path / "whole", **RUN)
    out = tmp_path / "parts"
    state = out.with_name("parts" + RESUME_SUFFIX)
    with pytest.raises(TrainingPaused, match=r"paused after 0 min at epoch 1 \(step 2\)") as info:
        train_semantic(image, labels, out, max_minutes=0, **RUN)
    assert info.value.path == state and state.is_file()
    assert not out.with_suffix(".safetensors").exists()  # no partial output
    assert not out.with_name("parts.card.yaml").exists()
    with pytest.raises(TrainingPaused, match=r"epoch 2 \(step 4\)"):
        train_semantic(image, labels, out, max_minutes=0, resume=True, **RUN)
    parts = train_semantic(image, labels, out, resume=True, **RUN)

    a = load_file(tmp_path / "whole.safetensors")
    b = load_file(tmp_path / "parts.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "parts.metrics.csv") == _rows(tmp_path / "whole.metrics.csv")
    assert len(_rows(tmp_path / "parts.metrics.csv")) == 3
    assert parts.metrics == whole.metrics
    assert parts.training is not None and whole.training is not None
    assert parts.training.steps == whole.training.steps == 6
    assert parts.training.best_epoch == whole.training.best_epoch
    assert whole.training.command == "terraseg train ..."
    assert parts.training.command == (
        "terraseg train ... (in 3 runs: with --max-minutes 0, then the same with --resume)"
    )
    assert not state.exists()  # finished: the state is gone


def test_a_run_that_dies_resumes_from_its_last_epoch(
    city: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state is saved after every epoch, so a run that fails (here: in epoch 2's
    validation) goes on from epoch 1 with ``resume`` to the model of an uninterrupted run."""
    from terraseg.models import records

    image, labels = city
    train_semantic(image, labels, tmp_path / "whole", **RUN)
    real, calls = records.iou_metrics, []

    def dies_in_epoch_2(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(records, "iou_metrics", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        train_semantic(image, labels, tmp_path / "died", **RUN)
    monkeypatch.setattr(records, "iou_metrics", real)
    assert (tmp_path / f"died{RESUME_SUFFIX}").is_file()
    assert not (tmp_path / "died.safetensors").exists()
    train_semantic(image, labels, tmp_path / "died", resume=True, **RUN)
    a = load_file(tmp_path / "whole.safetensors")
    b = load_file(tmp_path / "died.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "died.metrics.csv") == _rows(tmp_path / "whole.metrics.csv")


def test_resume_refuses_other_settings_a_missing_or_bad_state(
    city: tuple[Path, Path], tmp_path: Path
) -> None:
    image, labels = city
    out = tmp_path / "m"
    state = tmp_path / f"m{RESUME_SUFFIX}"
    with pytest.raises(ConfigError, match=r"nothing to resume: '.*m\.resume\.ckpt' does not"):
        train_semantic(image, labels, out, resume=True, **RUN)
    with pytest.raises(TrainingPaused):
        train_semantic(image, labels, out, max_minutes=0, **RUN)
    paused = state.read_bytes()
    with pytest.raises(
        ResumeMismatchError,
        match=r"it was started with other settings \(augment, lr\); give the same settings",
    ):
        train_semantic(image, labels, out, resume=True, **{**RUN, "lr": 1e-3, "augment": "full"})
    other = image.with_name("other.tif")
    other.write_bytes(image.read_bytes())
    with pytest.raises(ResumeMismatchError, match=r"\(the training or validation files\)"):
        train_semantic(other, labels, out, resume=True, **RUN)
    with pytest.raises(OutputExistsError, match="holds an unfinished training run; pass --resume"):
        train_semantic(image, labels, out, **RUN)
    assert state.read_bytes() == paused  # refusals leave the state as it was
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot resume from .*: not a readable training state \(UnpicklingError\); delete it"):
        train_semantic(image, labels, out, resume=True, **RUN)
    card = train_semantic(image, labels, out, overwrite=True, **{**RUN, "max_steps": 2})
    assert card.training is not None and card.training.steps == 2 and not state.exists()
    with pytest.raises(ConfigError, match="task 'detection' does not take max_minutes"):
        train_semantic(image, labels, tmp_path / "d", task="detection", max_minutes=1,
                       max_steps=1)


def test_cli_train_pauses_with_status_75_and_resumes(
    city: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from terraseg.cli.main import main

    image, labels = city
    out = tmp_path / "cli"
    argv = [
        "terraseg", "train", str(image), str(labels), "--out", str(out), "--max-steps", "4",
        "--steps-per-epoch", "2", "--batch-size", "2", "--patch-px", "64",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*argv, "--max-minutes", "0"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 75
    err = capsys.readouterr().err.strip()
    assert err.startswith("terraseg: training paused after 0 min at epoch 1 (step 2);")
    assert err.endswith(f"its state is in '{out}{RESUME_SUFFIX}'") and "\n" not in err
    assert not Path(f"{out}.safetensors").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    main()
    assert f"wrote {out}.safetensors" in capsys.readouterr().out
    assert not Path(f"{out}{RESUME_SUFFIX}").exists()


@pytest.mark.parametrize("out", ["m", "m.safetensors"])
def test_a_workflow_train_stage_pauses_and_terraseg_run_resume_finishes_it(
    out: str,
    city: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from terraseg.cli.main import main

    image, labels = city
    wf = tmp_path / "train.yaml"
    wf.write_text(
        f"""
version: 1
name: t
stages: [train]
outputs: {{dir: {tmp_path / "out"}}}
train:
  image: {image}
  labels: {labels}
  out: {out}
  max_steps: 4
  steps_per_epoch: 2
  batch_size: 2
  patch_px: 64
  max_minutes: 0
""",
        encoding="utf-8",
    )
    state = tmp_path / "out" / f"m{RESUME_SUFFIX}"
    monkeypatch.setattr(sys, "argv", ["terraseg", "run", str(wf)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 75 and state.is_file()
    assert "training paused after 0 min at epoch 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # again without --resume: refused, state kept
        main()
    assert info.value.code == 2 and state.is_file()
    assert "holds an unfinished training run; pass --resume" in capsys.readouterr().err
    wf.write_text(wf.read_text(encoding="utf-8").replace("  max_minutes: 0\n", ""),
                  encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["terraseg", "run", str(wf), "--resume"])
    main()
    assert (tmp_path / "out" / "m.safetensors").is_file() and not state.exists()
    rows = _rows(tmp_path / "out" / "m.metrics.csv")
    assert [r["step"] for r in rows] == ["2", "4"]
