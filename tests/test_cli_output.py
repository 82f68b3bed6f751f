"""What the CLI prints besides results (issue #20): help texts, warnings, verbosity, progress.

- help texts show their brackets (``terraseg[onnx]``), not rich markup eating them;
- library warnings are one line, ``terraseg: warning: ...``, with no Python file path
  unless ``--debug``; ``-q`` hides them, ``-v`` adds info log lines;
- progress shows on a non-terminal as periodic plain lines.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import typer
from affine import Affine

from terraseg.cli.main import app, main
from terraseg.cli.output import OutputSettings, install_output
from terraseg.progress import PlainProgress, progress_bars, progress_callback

UTM_ORIGIN = Affine(0.5, 0.0, 478_151.0, 0.0, -0.5, 4_647_683.0)
PY_PATH = re.compile(r"[\w/\\.-]+\.py\b")


def terraseg(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the ``terraseg`` console entry point in-process: ``(exit status, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["terraseg", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _mask_with_slivers(path: Path) -> Path:
    """A class mask whose two 1-2 px buildings fall under min_area_m2 (a GeometryDropWarning)."""
    arr = np.zeros((120, 140), np.uint8)
    arr[10:40, 10:50] = 1
    arr[60, 60] = 1
    arr[80:82, 90] = 1
    arr[100:108, :] = 2
    with rasterio.open(path, "w", driver="GTiff", height=120, width=140, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=UTM_ORIGIN) as ds:  # fmt: skip
        ds.write(arr, 1)
    return path


# --------------------------------------------------------------------------- help


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``cmd`` (typer's groups have ``commands``)."""
    found = [path]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def _flat(text: str) -> str:
    """Help output with rich's box drawing and line wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_help_text_shows_its_brackets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = typer.main.get_command(app)
    checked = 0
    for path in _commands(root):
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        texts = [p.help for p in cmd.params if getattr(p, "help", None)] + [cmd.help or ""]
        bracketed = [t.replace("\\[", "[") for t in texts if t and "[" in t]
        if not bracketed:
            continue
        code, out, err = terraseg(monkeypatch, capsys, *path, "--help")
        assert code == 0, err
        for text in bracketed:
            assert _flat(text) in _flat(out), (path, text)
            checked += 1
    assert checked >= 1
    code, out, _ = terraseg(monkeypatch, capsys, "predict", "--help")
    assert "pip install 'terraseg[onnx]'" in _flat(out)


# --------------------------------------------------------------------------- warnings


def test_library_warnings_are_one_line_without_file_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = _mask_with_slivers(tmp_path / "mask.tif")
    warnings.simplefilter("always", UserWarning)  # each run warns, as each shell command would
    show_before = warnings.showwarning
    code, out, err = terraseg(monkeypatch, capsys, "vectorize", str(mask), "--out",
                              str(tmp_path / "a" / "m.gpkg"))  # fmt: skip
    assert code == 0, err
    assert err.splitlines() == [
        "terraseg: warning: vectorize_buildings: dropped 2 geometries (2 smaller than "
        "min_area_m2=4, 0 empty or invalid beyond repair)"
    ]
    assert not PY_PATH.search(out + err)
    assert warnings.showwarning is show_before  # the command left the interpreter as it was
    # -q: results only
    code, out, err = terraseg(monkeypatch, capsys, "-q", "vectorize", str(mask), "--out",
                              str(tmp_path / "b" / "m.gpkg"))  # fmt: skip
    assert code == 0 and err == "" and "wrote" in out
    # --debug: Python's own format, file and line included
    code, _, err = terraseg(monkeypatch, capsys, "--debug", "vectorize", str(mask), "--out",
                            str(tmp_path / "c" / "m.gpkg"))  # fmt: skip
    assert code == 0 and PY_PATH.search(err) and "GeometryDropWarning" in err


def test_unexpected_errors_are_one_line_unless_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import terraseg.engine.postprocess as postprocess

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(postprocess, "vectorize_scene", boom)
    mask = _mask_with_slivers(tmp_path / "mask.tif")
    args = ("vectorize", str(mask), "--out", str(tmp_path / "o" / "m.gpkg"))
    code, out, err = terraseg(monkeypatch, capsys, *args)
    assert code == 1
    assert err.splitlines() == [
        "terraseg: error: internal error: RuntimeError: disk on fire second line; rerun with "
        "--debug for the traceback and report it"
    ]
    assert not PY_PATH.search(out + err)
    monkeypatch.setattr(sys, "argv", ["terraseg", "--debug", *args])
    with pytest.raises(RuntimeError, match="disk on fire"):
        main()


def test_quiet_and_verbose_contradict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = terraseg(monkeypatch, capsys, "-q", "-v", "models")
    assert code == 2 and err.startswith("terraseg: error: -q/--quiet and -v/--verbose")


def test_install_output_levels_and_restore() -> None:
    log = logging.getLogger("terraseg.test_cli_output")
    stream = io.StringIO()
    old_stderr, sys.stderr = sys.stderr, stream
    warnings.simplefilter("always")
    try:
        for verbosity, shown in ((-1, []), (0, ["warning"]), (1, ["info", "warning"]),
                                 (2, ["debug", "info", "warning"])):  # fmt: skip
            stream.seek(0)
            stream.truncate()
            restore = install_output(OutputSettings(verbosity=verbosity))
            try:
                log.debug("d")
                log.info("i")
                log.warning("w\n  more")
                warnings.warn("careful", UserWarning, stacklevel=1)
            finally:
                restore()
            lines = stream.getvalue().splitlines()
            logged = [ln.split(": ")[1] for ln in lines if not ln.endswith("careful")]
            assert logged == shown, (verbosity, lines)
            assert ("terraseg: warning: careful" in lines) == (verbosity >= 0)
            if verbosity == 0:
                assert "terraseg: warning: w more" in lines
    finally:
        sys.stderr = old_stderr
    assert logging.getLogger("terraseg").handlers == []


# --------------------------------------------------------------------------- progress


def test_plain_progress_every_tenth_and_every_interval() -> None:
    out = io.StringIO()
    now = [0.0]
    p = PlainProgress("train", unit="step", stream=out, clock=lambda: now[0])
    for step in range(1, 1001):
        now[0] = step * 0.5  # 500 s in all: lines by time (30 s) as well as by tenths
        p.update(step, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 60/1000 steps (6 %), 0:00:30 elapsed"
    assert lines[-1] == "train: 1000/1000 steps (100 %), 0:08:20 elapsed"
    assert "train: 100/1000 steps (10 %), 0:00:50 elapsed" in lines
    assert len(lines) == len(set(lines)) and 20 <= len(lines) <= 27
    p.update(1000, 1000)  # finished: nothing more
    assert out.getvalue().splitlines() == lines


def test_progress_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()
    with progress_callback("quiet", unit="chunk") as cb:  # library default: nothing
        cb(1, 2)
    with progress_callback("predict", unit="chunk", enabled=True) as cb:
        for i in range(1, 5):
            cb(i, 4)
    with progress_bars(enabled=True) as bar:
        bar("/data/a.tif", 1, 2)
        bar("/data/a.tif", 2, 2)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "predict: 1/4 chunks (25 %), 0:00:00 elapsed",
        "predict: 2/4 chunks (50 %), 0:00:00 elapsed",
        "predict: 3/4 chunks (75 %), 0:00:00 elapsed",
        "predict: 4/4 chunks (100 %), 0:00:00 elapsed",
        "a.tif: 1/2 chunks (50 %), 0:00:00 elapsed",
        "a.tif: 2/2 chunks (100 %), 0:00:00 elapsed",
    ]


def test_cli_progress_is_plain_lines_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = terraseg(monkeypatch, capsys, "synth", str(tmp_path / "s.tif"), "--size-px",
                            "600", "--seed", "3")  # fmt: skip
    assert code == 0
    lines = err.splitlines()
    assert lines and all(re.fullmatch(r"synth: \d+/\d+ windows \(\d+ %\), \d:\d\d:\d\d elapsed", ln)
                         for ln in lines), lines  # fmt: skip
    assert "(100 %)" in lines[-1]
    code, _, err = terraseg(monkeypatch, capsys, "-q", "synth", str(tmp_path / "q.tif"),
                            "--size-px", "600", "--seed", "3")  # fmt: skip
    assert code == 0 and err == ""


def test_train_progress_callback_writes_lines(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightning")
    from terraseg.models.task import _plain_progress

    cb = _plain_progress(total_steps=10)
    for step in range(1, 11):
        cb.on_train_batch_end(SimpleNamespace(global_step=step), None, None, None, step - 1)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 10 and err[-1].startswith("train: 10/10 steps (100 %)")


@pytest.mark.slow
def test_train_progress_shows_in_a_log(tmp_path: Path) -> None:
    """``terraseg train --progress`` with stderr to a pipe (about 40 s on 2 cores)."""
    from terraseg.synthetic import make_city

    city = make_city(tmp_path / "c.tif", size_px=300, seed=1)
    exe = str(Path(sys.executable).with_name("terraseg"))
    proc = subprocess.run(
        [exe, "train", str(city.image), str(city.truth_gpkg), "--out", str(tmp_path / "m"),
         "--max-steps", "10", "--batch-size", "2", "--patch-px", "64", "--progress"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train: ")]
    assert lines and lines[-1].startswith("train: 10/10 steps (100 %)"), proc.stderr
    assert not PY_PATH.search(proc.stderr)
