"""The bad-input corpus as data: each case builds its input, says how to run it, and what to expect.

A case is run either through the real console script (``CLI``: a subprocess,
exactly as a user runs it) or through the Python API (``API``: the exception a
notebook user sees, printed the way the CLI would print it). The runner
(:func:`run_case`) snapshots every file under the case folder before the run
(size, mtime, sha1) and compares afterwards, so "no partial output" and
"previous outputs untouched" are checked the same way for every case:

- ``error``: exit status 2, exactly ONE non-empty stderr line
  ``terraseg: error: <message>`` matching the case's regex (which names the
  file and the fix), no traceback, no new file anywhere (empty folders are
  allowed) and every pre-existing file byte- and mtime-identical.
- ``warning``: exit status 0, stderr holds only Python warnings (one of them
  matching the regex), no hidden temporary files left, inputs untouched.
- ``ok`` (odd but valid input): as ``warning`` without a required warning.

Cases whose expectation ``src/`` does not meet yet carry ``xfail`` (a reason
naming the bug); the test module marks them ``xfail(strict=True)``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import rasterio

from . import make_corpus as mc

TERRASEG = str(Path(sys.executable).with_name("terraseg"))
PREFIX = "terraseg: error: "
FAST = ["--tile-px", "64", "--overlap-px", "16", "--chunk-px", "128"]
"""Small tiles for the small corpus scenes: several chunks, fast on a CPU."""

CLEAR_ERROR = "clear error"
DOCUMENTED = "documented warning"

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class CLI:
    """Run ``terraseg *args`` in the case folder."""

    args: Sequence[str]


@dataclass(frozen=True)
class API:
    """Call ``func()``; a TerrasegError is printed as the CLI would print it."""

    func: Callable[[], Any]


@dataclass(frozen=True)
class Custom:
    """A case that runs itself (e.g. kills a subprocess) and returns its :class:`Outcome`."""

    func: Callable[[], Outcome]


@dataclass
class Setup:
    """What a case's builder returns: how to run it and what else to check."""

    run: CLI | API | Custom
    check: Callable[[Outcome], None] | None = None
    allow_tmp: bool = False  # hidden temp files may remain (a SIGKILLed process can't clean up)


@dataclass(frozen=True)
class Case:
    id: str
    input: str
    build: Callable[[Path], Setup]
    expect: Sequence[str]  # acceptable verdicts: CLEAR_ERROR and/or DOCUMENTED
    pattern: str  # regex on the error message (after the prefix) or on a warning
    xfail: str | None = None

    @property
    def kind(self) -> str:
        name = getattr(self.build, "kind", "api")
        return str(name)


@dataclass
class Outcome:
    returncode: int
    stdout: str = ""
    stderr: str = ""
    warnings: list[str] = field(default_factory=list)
    exception: BaseException | None = None
    seconds: float = 0.0
    # filled in by run_case
    new_files: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    tmp_files: list[str] = field(default_factory=list)
    folder: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines, without plain progress lines (not a terminal)."""
        return [ln for ln in self.stderr.splitlines() if ln.strip() and not _PROGRESS.match(ln)]

    @property
    def line(self) -> str:
        return self.lines[0] if self.lines else ""

    @property
    def message(self) -> str:
        return self.line.removeprefix(PREFIX)

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    def describe(self) -> str:
        return (
            f"rc={self.returncode} in {self.seconds:.1f}s\n--- stderr\n{self.stderr}\n"
            f"--- stdout (tail)\n{self.stdout[-1500:]}\n--- warnings {self.warnings}\n"
            f"new={self.new_files} changed={self.changed_files} tmp={self.tmp_files}"
        )


# --------------------------------------------------------------------------- runner


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def is_tmp_name(name: str) -> bool:
    """Temporary names of terraseg's atomic writes: ``.<stem>.<hex>.tmp<suffix>``."""
    return name.startswith(".") and ".tmp" in name


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 180) -> Outcome:
    # the user's default warning filters: no PYTHONWARNINGS from the test environment
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"COLUMNS": "200"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [TERRASEG, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr,
                   seconds=time.perf_counter() - t0)


def run_api(func: Callable[[], Any]) -> Outcome:
    from terraseg.errors import TerrasegError

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            func()
            rc, stderr, exc = 0, "", None
        except TerrasegError as err:
            rc, stderr, exc = 2, f"{PREFIX}{err}\n", err
        except Exception as err:  # what the CLI would show as a traceback
            rc, exc = 1, err
            stderr = "Traceback (most recent call last):\n" + "".join(
                traceback.format_exception(err)
            )
    seen = [f"{w.category.__name__}: {w.message}" for w in record
            if not issubclass(w.category, (PendingDeprecationWarning, DeprecationWarning))]
    return Outcome(rc, "", stderr, seen, exc, time.perf_counter() - t0)


def run_case(case: Case, folder: Path) -> tuple[Setup, Outcome]:
    """Build the case's inputs in ``folder``, run it, and compare the folder before/after."""
    setup = case.build(folder)
    before = _snapshot(folder)
    run = setup.run
    if isinstance(run, CLI):
        outcome = run_cli(run.args, folder)
    elif isinstance(run, API):
        outcome = run_api(run.func)
    else:
        outcome = run.func()
    after = _snapshot(folder)
    outcome.folder = folder
    outcome.new_files = sorted(set(after) - set(before))
    outcome.changed_files = sorted(k for k in before if after.get(k) != before[k])
    outcome.tmp_files = sorted(k for k in after if is_tmp_name(Path(k).name))
    return setup, outcome


_WARNING_LINE = re.compile(r"^(\S.*?\b\w*Warning: |terraseg: warning: )")
#: What the CLI prints for progress when stderr is no terminal, e.g.
#: ``predict: 3/9 chunks (33 %), 0:00:02 elapsed``: neither an error nor a warning.
_PROGRESS = re.compile(r"^[\w .-]+: \d+(/\d+)? \w+( \(\d+ %\))?, \d+:\d\d:\d\d elapsed$")


def only_warnings(stderr: str) -> bool:
    """Every stderr line is a Python warning (``file:line: XWarning: msg``) or its source line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    return all(_WARNING_LINE.match(ln) or ln.startswith((" ", "\t")) for ln in lines)


def partial_output(case: Case, setup: Setup, o: Outcome) -> bool:
    if o.changed_files:
        return True
    if o.returncode != 0:  # failed: nothing new may remain, not even a temp file
        return bool(o.new_files)
    return bool(o.tmp_files) and not setup.allow_tmp


def verdict(case: Case, setup: Setup, o: Outcome) -> str:
    """One of CLEAR_ERROR, DOCUMENTED, or a short description of what went wrong."""
    if o.traceback:
        return "traceback"
    if partial_output(case, setup, o):
        return "partial output"
    if o.returncode == 2:
        if len(o.lines) != 1:
            return f"error on {len(o.lines)} stderr lines"
        if not o.line.startswith(PREFIX):
            return "error without the 'terraseg: error:' prefix"
        if not re.search(case.pattern, o.message):
            return "unexpected error message"
        return CLEAR_ERROR
    if o.returncode != 0:
        return f"exit status {o.returncode}"
    warned = o.warnings + [ln for ln in o.lines if _WARNING_LINE.match(ln)]
    if not only_warnings(o.stderr):
        return "stderr holds more than warnings"
    if DOCUMENTED in case.expect and CLEAR_ERROR in case.expect:
        # 'refuse or warn' cases: exit 0 only counts with a matching warning
        return DOCUMENTED if any(re.search(case.pattern, w) for w in warned) else "silent"
    if case.pattern and not any(re.search(case.pattern, w) for w in warned):
        return "no matching warning"
    return DOCUMENTED


# --------------------------------------------------------------------------- helpers for checks


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def assert_absent(*paths: Path) -> Callable[[Outcome], None]:
    def check(o: Outcome) -> None:
        for p in paths:
            assert not p.exists(), f"{p} exists: the input ran code or left output"
    return check


def assert_nodata_where(classes: Path, invalid: np.ndarray) -> None:
    labels = read_band(classes)
    assert labels.shape == invalid.shape
    assert (labels[invalid] == 255).all(), "invalid input pixels must be nodata (255)"
    assert (labels[~invalid] != 255).all(), "valid input pixels must get a class"


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def cli(func: Callable[[Path], Setup]) -> Callable[[Path], Setup]:
    func.kind = "cli"  # type: ignore[attr-defined]
    return func


def api(func: Callable[[Path], Setup]) -> Callable[[Path], Setup]:
    func.kind = "api"  # type: ignore[attr-defined]
    return func


def predict_api(scene: Path, out: Path, **kw: Any) -> Any:
    from terraseg.api import predict_to_dir

    opts = {"tile_px": 64, "overlap_px": 16, "chunk_px": 128, "show_progress": False}
    return predict_to_dir(scene, out, **(opts | kw))


# --------------------------------------------------------------------------- builders: CLI


@cli
def b_truncated(d: Path) -> Setup:
    return Setup(CLI(["predict", str(mc.truncated_tiff(d)), "--out", "out", *FAST]))


@cli
def b_text_named_tif(d: Path) -> Setup:
    return Setup(CLI(["plan", str(mc.text_named_tif(d))]))


@cli
def b_no_crs(d: Path) -> Setup:
    return Setup(CLI(["predict", str(mc.tiff_without_crs(d)), "--out", "out", *FAST]))


@cli
def b_unknown_assume_crs(d: Path) -> Setup:
    scene = mc.tiff_without_crs(d)
    return Setup(CLI(["predict", str(scene), "--assume-crs", "EPSG:999999", "--out", "out"]))


@cli
def b_no_geotransform(d: Path) -> Setup:
    return Setup(CLI(["predict", str(mc.tiff_without_geotransform(d)), "--out", "out"]))


@cli
def b_rotated(d: Path) -> Setup:
    return Setup(CLI(["plan", str(mc.rotated_tiff(d))]))


@cli
def b_zero_width(d: Path) -> Setup:
    return Setup(CLI(["plan", str(mc.zero_width_vrt(d))]))


@cli
def b_corrupt_middle(d: Path) -> Setup:
    scene = mc.corrupt_middle_block(d)
    mc.previous_outputs(d / "prev")
    return Setup(CLI(["predict", str(scene), "--out", "prev", "--overwrite", "--no-vectorize",
                      "--tile-px", "256", "--overlap-px", "32", "--chunk-px", "512"]))


@cli
def b_two_bands(d: Path) -> Setup:
    return Setup(CLI(["predict", str(mc.band_count(d, 2)), "--out", "out", "--model", "cheap",
                      *FAST]))


@cli
def b_pickled_code(d: Path) -> Setup:
    marker = d / "PWNED"
    weights = mc.pickled_code_checkpoint(d, marker)
    scene = mc.good_scene(d)
    return Setup(CLI(["predict", str(scene), "--out", "out", "--model", str(weights), *FAST]),
                 check=assert_absent(marker))


@cli
def b_corrupt_checkpoint(d: Path) -> Setup:
    weights = mc.truncated_checkpoint(d)
    scene = mc.good_scene(d)
    return Setup(CLI(["predict", str(scene), "--out", "out", "--model", str(weights), *FAST]))


@cli
def b_card_wrong_classes(d: Path) -> Setup:
    weights = mc.wrong_classes_checkpoint(d)
    scene = mc.good_scene(d)
    return Setup(CLI(["predict", str(scene), "--out", "out", "--model", str(weights), *FAST]))


@cli
def b_yaml_unknown_key(d: Path) -> Setup:
    wf = mc.unknown_key_workflow(d, mc.good_scene(d))
    return Setup(CLI(["run", str(wf)]), check=assert_absent(d / "out"))


@cli
def b_yaml_python_tag(d: Path) -> Setup:
    marker = d / "PWNED"
    mc.good_scene(d)
    wf = mc.python_tag_workflow(d, marker)
    return Setup(CLI(["run", str(wf)]), check=assert_absent(marker, d / "out"))


@cli
def b_output_exists(d: Path) -> Setup:
    scene = mc.good_scene(d)
    mc.previous_outputs(d / "prev")
    return Setup(CLI(["predict", str(scene), "--out", "prev", *FAST]))


@cli
def b_output_parent_is_file(d: Path) -> Setup:
    # Tests run as root, so chmod cannot make a folder read-only; a path whose
    # parent is a regular file is unwritable for everyone.
    scene = mc.good_scene(d)
    (d / "afile").write_text("I am a file, not a folder\n")
    return Setup(CLI(["predict", str(scene), "--out", str(d / "afile" / "out"), *FAST]))


@cli
def b_empty_label_file(d: Path) -> Setup:
    scene = mc.good_scene(d)
    labels = mc.empty_label_file(d)
    return Setup(CLI(["train", str(scene), str(labels), "--out", "model", "--max-steps", "1"]))


@cli
def b_all_nodata(d: Path) -> Setup:
    return Setup(CLI(["predict", str(mc.all_nodata(d)), "--out", "out", "--no-vectorize", *FAST]))


@cli
def b_one_by_one(d: Path) -> Setup:
    scene = mc.one_by_one(d)

    def check(o: Outcome) -> None:
        out = d / "out"
        for name in ("classes.tif", "instances.tif", "run.json", "one_pixel.gpkg",
                     "one_pixel.qgz"):
            assert (out / name).is_file(), name
        labels = read_band(out / "classes.tif")
        assert labels.shape == (1, 1) and labels[0, 0] in (0, 1, 2)

    return Setup(CLI(["predict", str(scene), "--out", "out"]), check=check)


@cli
def b_antimeridian(d: Path) -> Setup:
    scene = mc.antimeridian(d)

    def check(o: Outcome) -> None:
        import geopandas as gpd

        gpkg = d / "out" / "fiji.gpkg"
        buildings = gpd.read_file(gpkg, layer="buildings")
        roads = gpd.read_file(gpkg, layer="roads")
        assert buildings.crs.to_epsg() == 4326 and len(buildings) and len(roads)
        left, _, right, _ = roads.total_bounds
        assert left < 180.0 < right, "the vectors keep the scene's >180° longitudes"
        area = float(buildings["area_m2"].median())
        assert 10.0 < area < 5000.0, f"area_m2 must be square metres, got median {area}"
        o.notes["median_building_area_m2"] = round(area, 1)

    return Setup(CLI(["predict", str(scene), "--out", "out", *FAST]), check=check)


@cli
def b_partial_nodata(d: Path) -> Setup:
    scene, hole = mc.partial_nodata(d)
    return Setup(
        CLI(["predict", str(scene), "--out", "out", "--no-vectorize", *FAST]),
        check=lambda o: assert_nodata_where(d / "out" / "classes.tif", hole),
    )


@cli
def b_huge_sparse_plan(d: Path) -> Setup:
    scene = mc.huge_sparse(d)

    def check(o: Outcome) -> None:
        plan = json.loads(o.stdout)
        assert plan["shape"] == [200_000, 200_000] and plan["n_chunks"] == 112 * 112
        assert o.seconds < 30, f"plan took {o.seconds:.1f} s; it must read no pixels"
        o.notes["plan_seconds"] = round(o.seconds, 1)

    return Setup(CLI(["plan", str(scene)]), check=check)


# --------------------------------------------------------------------------- interrupted write

_KILLED: dict[str, Any] = {}


def interrupted_predict(d: Path) -> dict[str, Any]:
    """SIGKILL ``terraseg predict`` mid-run, then rerun it with ``--overwrite``.

    Computed once per session (the second interrupted case only reads it).
    """
    if _KILLED:
        return _KILLED
    scene = mc.medium_scene(d)
    out = d / "out"
    # --device cpu: the timing must not depend on whether the machine has a GPU
    args = [TERRASEG, "predict", str(scene), "--out", str(out), "--no-vectorize",
            "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # mid-run: the first chunk is stored (of 4, a few seconds each); the outputs come
            # after the last one, written in .publish/ and then moved into place together
            if any((out / ".chunks").glob("chunk_*.npz")):
                time.sleep(0.2)
                break
            time.sleep(0.05)
        finished_early = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        _, killed_err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    after_kill = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    rerun = run_cli([*args[1:], "--overwrite"], d)
    after_rerun = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    _KILLED.update(
        finished_early=finished_early, kill_returncode=proc.returncode, kill_stderr=killed_err,
        after_kill=after_kill, after_rerun=after_rerun, rerun=rerun, out=out,
        seconds=time.perf_counter() - t0,
    )
    return _KILLED


@cli
def b_interrupted_write(d: Path) -> Setup:
    def go() -> Outcome:
        k = interrupted_predict(d)
        o: Outcome = k["rerun"]
        o.notes.update(after_kill=k["after_kill"], after_rerun=k["after_rerun"])
        o.seconds = k["seconds"]
        return o

    def check(o: Outcome) -> None:
        k = _KILLED
        assert not k["finished_early"], "the scene finished before the kill; make it bigger"
        assert k["kill_returncode"] == -signal.SIGKILL
        assert k["after_kill"], "the killed run had started writing (its chunk store)"
        # what a kill leaves: the chunk store to resume from and the staging folder of the
        # outputs (moved into place together when a scene is finished), never an output
        assert set(k["after_kill"]) <= {".chunks", ".publish"}, (
            f"after SIGKILL only .chunks and .publish may remain, found {k['after_kill']}")
        out = k["out"]
        with rasterio.open(out / "classes.tif") as src:
            assert src.shape == (3000, 3000)
        assert (out / "run.json").is_file()

    return Setup(Custom(go), check=check, allow_tmp=True)


@cli
def b_interrupted_cleanup(d: Path) -> Setup:
    def go() -> Outcome:
        k = interrupted_predict(d)
        stale = [n for n in k["after_rerun"] if is_tmp_name(n)]
        rc = 0 if not stale else 3
        err = "" if not stale else f"stale temp files after the rerun: {stale}\n"
        return Outcome(rc, "", err, notes={"stale": stale})

    return Setup(Custom(go))


# --------------------------------------------------------------------------- builders: API


@api
def b_zero_height(d: Path) -> Setup:
    from terraseg.io.scene import open_scene

    path = mc.zero_height_tiff(d)
    return Setup(API(lambda: open_scene(path)))


@api
def b_float_nan(d: Path) -> Setup:
    scene, nan = mc.float_with_nan(d)
    return Setup(API(lambda: predict_api(scene, d / "out")),
                 check=lambda o: assert_nodata_where(d / "out" / "classes.tif", nan))


@api
def b_alpha(d: Path) -> Setup:
    scene, transparent = mc.alpha_band(d)
    return Setup(API(lambda: predict_api(scene, d / "out")),
                 check=lambda o: assert_nodata_where(d / "out" / "classes.tif", transparent))


@api
def b_huge_sparse_predict(d: Path) -> Setup:
    scene = mc.huge_sparse(d)

    class Started(Exception):
        pass

    def started(*_: Any, **__: Any) -> Any:
        raise Started

    def go() -> None:
        # Stop where the scene's tasks would start: the question is only whether predict
        # warns or refuses BEFORE it starts 12544 chunks (40 Gpx, hours on a CPU).
        with mock.patch("terraseg.engine.cluster.run_scenes", started):
            try:
                predict_api(scene, d / "out", tile_px=512, overlap_px=64, chunk_px=2048)
            except Started:
                pass

    return Setup(API(go))


@api
def b_disk_full_cog(d: Path) -> Setup:
    scene = mc.good_scene(d)
    mc.previous_outputs(d / "prev")

    def copy_then_fail(src: str, dst: str, **_: Any) -> None:
        Path(dst).write_bytes(b"\0" * 4096)  # GDAL got this far, then the disk filled up
        _enospc()

    def go() -> None:
        with mock.patch.object(rasterio.shutil, "copy", copy_then_fail):
            predict_api(scene, d / "prev", overwrite=True)

    return Setup(API(go))


@api
def b_disk_full_run_json(d: Path) -> Setup:
    scene = mc.good_scene(d)
    mc.previous_outputs(d / "prev")
    real_text, real_bytes = Path.write_text, Path.write_bytes

    def is_run_json(path: Path) -> bool:  # run.json's temporary name: .run.<hex>.tmp.json
        return path.suffix == ".json" and is_tmp_name(path.name) and path.name.startswith(".run.")

    def write_text(self: Path, data: str, *a: Any, **k: Any) -> int:
        if is_run_json(self):
            real_text(self, data[:20], *a, **k)
            _enospc()
        return real_text(self, data, *a, **k)

    def write_bytes(self: Path, data: Any) -> int:
        if is_run_json(self):
            real_bytes(self, bytes(data)[:20])
            _enospc()
        return real_bytes(self, data)

    def go() -> None:
        with mock.patch.object(Path, "write_text", write_text), \
                mock.patch.object(Path, "write_bytes", write_bytes):
            predict_api(scene, d / "prev", overwrite=True)

    return Setup(API(go))


@api
def b_disk_full_export(d: Path) -> Setup:
    import geopandas as gpd
    import shapely

    from terraseg.core.grid import PixelWindow
    from terraseg.engine.postprocess import export_vectors
    from terraseg.io.raster_sink import RasterSink

    run = d / "run"
    run.mkdir()
    classes = run / "classes.tif"
    grid = {"crs": mc.UTM, "transform": mc.utm_transform(), "shape": (64, 64)}
    with RasterSink(classes, like=grid) as sink:
        sink.write(PixelWindow(0, 0, 64, 64), np.ones((1, 64, 64), np.uint8))
    x, y = mc.ORIGIN
    layers = {
        "buildings": gpd.GeoDataFrame({"area_m2": [25.0]},
                                      geometry=[shapely.box(x + 2, y - 7, x + 7, y - 2)],
                                      crs=mc.UTM),
    }
    real = shutil.copyfile

    def copyfile(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
        if Path(src).name == "classes.tif":
            Path(dst).write_bytes(Path(src).read_bytes()[:1000])
            _enospc()
        return real(src, dst, *a, **k)

    def go() -> None:
        with mock.patch("shutil.copyfile", copyfile):
            export_vectors(layers, d / "export", scene_name="scene", formats=("gpkg", "fgb"),
                           masks={"classes": classes})

    return Setup(API(go))


@api
def b_labels_invalid(d: Path) -> Setup:
    from terraseg.models.train import rasterize_labels

    scene = mc.good_scene(d)
    labels = mc.invalid_polygon_labels(d, scene)

    def check(o: Outcome) -> None:
        assert any("skipped 1 empty or missing geometry" in w for w in o.warnings), o.warnings
        band = read_band(d / "labels.tif")
        # the repaired bow-tie (10 m square, 60 m right of and 50 m below the corner) is burned
        assert (band[100:120, 120:140] == 1).any(), "the repaired bow-tie was not burned"

    return Setup(API(lambda: rasterize_labels(labels, scene, d / "labels.tif")), check=check)


@api
def b_labels_other_crs(d: Path) -> Setup:
    from terraseg.models.train import rasterize_labels, train_semantic

    scene = mc.good_scene(d)
    utm = mc.labels_gpkg(d, scene, "labels_utm.gpkg")
    lonlat = mc.labels_gpkg(d, scene, "labels_4326.gpkg", crs="EPSG:4326")

    def go() -> None:
        train_semantic(scene, lonlat, d / "model", max_steps=1, batch_size=2, patch_px=64,
                       steps_per_epoch=1, val_fraction=0.3)
        rasterize_labels(utm, scene, d / "utm.tif")
        rasterize_labels(lonlat, scene, d / "lonlat.tif")

    def check(o: Outcome) -> None:
        assert (d / "model.safetensors").is_file() and (d / "model.card.yaml").is_file()
        a, b = read_band(d / "utm.tif"), read_band(d / "lonlat.tif")
        agree = float((a == b).mean())
        assert agree > 0.995, f"labels reprojected from EPSG:4326 agree on only {agree:.2%}"
        o.notes["pixel_agreement"] = round(agree, 5)

    return Setup(API(go), check=check)


@api
def b_labels_featureless(d: Path) -> Setup:
    from terraseg.models.train import rasterize_labels

    scene = mc.good_scene(d)
    labels = mc.featureless_labels(d)
    return Setup(API(lambda: rasterize_labels(labels, scene, d / "labels.tif")))


@api
def b_labels_without_crs(d: Path) -> Setup:
    from terraseg.models.train import rasterize_labels

    scene = mc.good_scene(d)
    labels = mc.labels_without_crs(d, scene)
    return Setup(API(lambda: rasterize_labels(labels, scene, d / "labels.tif",
                                              layers={"buildings": 1})))


@api
def b_yaml_tls_without_certs(d: Path) -> Setup:
    from terraseg.config import load_workflow

    wf = mc.tls_without_certs_workflow(d)
    return Setup(API(lambda: load_workflow(wf)))


@api
def b_yaml_future_version(d: Path) -> Setup:
    from terraseg.config import load_workflow

    wf = mc.future_version_workflow(d)
    return Setup(API(lambda: load_workflow(wf)))


@api
def b_workflow_missing_scene(d: Path) -> Setup:
    from terraseg.config import load_workflow
    from terraseg.engine.batch import plan_workflow

    wf = mc.missing_scene_workflow(d)
    return Setup(API(lambda: plan_workflow(load_workflow(wf))))


# --------------------------------------------------------------------------- the corpus

E, W = (CLEAR_ERROR,), (DOCUMENTED,)
FILE_FIX = r"; check the path or re-download/repair the file$"

CASES: list[Case] = [
    # ---- rasters (CLI)
    Case("truncated_tiff", "tiled deflate GeoTIFF cut to half its bytes", b_truncated, E,
         r"^cannot read scene '[^']*truncated\.tif': the file is truncated or corrupt \(.+\)"
         + FILE_FIX),
    Case("text_named_tif", "an HTML error page saved as download.tif", b_text_named_tif, E,
         r"^cannot read scene '[^']*download\.tif': not a raster \(GDAL does not recognise "
         r"the format\)" + FILE_FIX),
    Case("no_crs", "GeoTIFF with a geotransform but no CRS", b_no_crs, E,
         r"^scene '[^']*nocrs\.tif' has no CRS; pass --assume-crs EPSG:\d+ .*or repair the file$"),
    Case("unknown_assume_crs", "no-CRS scene with --assume-crs EPSG:999999",
         b_unknown_assume_crs, E,
         r"^unknown CRS 'EPSG:999999'; pass an EPSG code such as EPSG:32633, or WKT/PROJ text$"),
    Case("no_geotransform", "plain image: identity transform, no CRS", b_no_geotransform, E,
         r"^scene '[^']*nogeo\.tif' has no geotransform \(not georeferenced\); georeference it, "
         r"e\.g\. gdal_translate -a_srs EPSG:<code> -a_ullr"),
    Case("rotated_geotransform", "geotransform with rotation/shear terms", b_rotated, E,
         r"^scene '[^']*rotated\.tif' has a rotated or sheared geotransform \(.+\); terraseg "
         r"needs a north-up raster: run gdalwarp .*rotated\.tif"),
    Case("zero_width_raster", "0x10 raster (a VRT: GDAL cannot create a 0-sized GTiff)",
         b_zero_width, E,
         r"^cannot read scene '[^']*zero_width\.vrt': the raster has zero size" + FILE_FIX),
    Case("corrupt_middle_block", "first/last tiles fine, a middle tile garbage; --overwrite "
         "over a previous run", b_corrupt_middle, E,
         r"^cannot read window PixelWindow\(.+\) of scene '[^']*corrupt_middle\.tif': the file "
         r"is truncated or corrupt \(.+\)" + FILE_FIX),
    Case("wrong_band_count", "2-band scene for the 3-band model 'cheap'", b_two_bands, E,
         r"^model 'cheap' reads bands \[1, 2, 3\] but scene '[^']*2band\.tif' has 2 band\(s\); "
         r"choose a scene with 3\+ bands or set the model's input bands"),
    Case("all_nodata", "every pixel equals nodata (0)", b_all_nodata, (CLEAR_ERROR, DOCUMENTED),
         r"all_nodata\.tif.*(no valid|nodata)"),
    Case("partial_nodata", "left 40 % and a corner are nodata", b_partial_nodata, W, ""),
    Case("one_by_one", "1x1 raster, full predict + vectorize", b_one_by_one, W, ""),
    Case("antimeridian", "EPSG:4326 scene straddling lon 180 at 16°S, full run", b_antimeridian,
         W, ""),
    Case("huge_sparse_plan", "200000x200000 sparse GTiff (one block written): plan",
         b_huge_sparse_plan, W, ""),
    # ---- models (CLI)
    Case("checkpoint_pickled_code", "torch.save zip whose pickle calls open(marker, 'w')",
         b_pickled_code, E,
         r"^refusing to load '[^']*evil\.pt': it contains pickled code \(.*open.*\); re-save it "
         r"as a state dict"),
    Case("checkpoint_corrupt", "safetensors cut in half (card without checksum)",
         b_corrupt_checkpoint, E,
         r"^cannot read '[^']*cut\.safetensors': the safetensors file is corrupt or truncated "
         r"\(.+\); re-export it$"),
    Case("card_wrong_classes", "3-class weights, card lists 2 classes", b_card_wrong_classes, E,
         r"^weights '[^']*wrongcard\.safetensors' produce 3 class\(es\) .* but card "
         r"'[^']*wrongcard\.card\.yaml' lists 2 \(background/building\); use the card that came "
         r"with the weights"),
    # ---- workflows and outputs (CLI)
    Case("yaml_unknown_key", "workflow with tiling.tile_size (typo of tile_px)",
         b_yaml_unknown_key, E,
         r"^workflow '[^']*typo\.yaml': tiling\.tile_size: unknown key; check the spelling"),
    Case("yaml_python_tag", "workflow with !!python/object/apply:os.system", b_yaml_python_tag, E,
         r"^workflow '[^']*evil\.yaml' uses a YAML tag that is not allowed \(.*python/object"
         r".*\); workflows are plain data: remove the tag$"),
    Case("output_exists", "--out holds a previous run, no --overwrite", b_output_exists, E,
         r"^output '[^']*prev/classes\.tif' already exists; pass --overwrite"),
    Case("output_unwritable", "--out under a regular file (root ignores chmod)",
         b_output_parent_is_file, E,
         r"^cannot create output folder '[^']*afile/out': Not a directory; choose a writable "
         r"location$"),
    Case("labels_empty_file", "train with a 0-byte labels .gpkg", b_empty_label_file, E,
         r"^cannot read labels '[^']*empty\.gpkg': .+; give a GeoPackage/shapefile/GeoJSON or "
         r"a class raster$"),
    Case("interrupted_write", "SIGKILL predict mid-run, rerun with --overwrite",
         b_interrupted_write, W, ""),
    Case("interrupted_cleanup", "rerun after SIGKILL leaves no stale temp file",
         b_interrupted_cleanup, W, ""),
    # ---- API
    Case("zero_height_raster", "GTiff whose ImageLength tag was patched to 0", b_zero_height, E,
         r"^cannot read scene '[^']*zero_height\.tif': the file is truncated or corrupt \(.*zero "
         r"number of strips\)" + FILE_FIX),
    Case("float_nan", "float32 scene with NaN holes in one band", b_float_nan, W, ""),
    Case("alpha_band", "RGBA, alpha 0 over the top 70 rows", b_alpha, W, ""),
    Case("huge_sparse_predict", "predict on the 40 Gpx sparse scene", b_huge_sparse_predict,
         (CLEAR_ERROR, DOCUMENTED), r"huge_sparse\.tif"),
    Case("disk_full_cog", "ENOSPC while GDAL writes the COG; --overwrite over a previous run",
         b_disk_full_cog, E,
         r"^cannot finish raster output '[^']*classes\.tif': \[Errno 28\] No space left on "
         r"device; check free disk space$"),
    Case("disk_full_run_json", "ENOSPC while writing run.json; --overwrite over a previous run",
         b_disk_full_run_json, E, r"run\.json.*No space left on device"),
    Case("disk_full_export", "ENOSPC while export copies a mask", b_disk_full_export, E,
         r"classes\.tif.*No space left on device"),
    Case("labels_invalid_polygons", "bow-tie, spike and empty polygon among labels",
         b_labels_invalid, W,
         r"labels '[^']*invalid_labels\.gpkg': repaired 2 invalid geometries with "
         r"shapely\.make_valid"),
    Case("labels_other_crs", "labels in EPSG:4326 for a UTM image: train 1 step",
         b_labels_other_crs, W, ""),
    Case("labels_no_features", "GeoPackage with the label layers but no features",
         b_labels_featureless, E, r"no_features\.gpkg.*(no (features|geometries)|empty)"),
    Case("labels_no_crs", "shapefile without .prj", b_labels_without_crs, E,
         r"^labels '[^']*nocrs\.shp' layer 'nocrs' have no CRS; set one"),
    Case("yaml_tls_without_certs", "tls:// address without cluster.tls", b_yaml_tls_without_certs,
         E, r"^workflow '[^']*tls\.yaml': cluster: a tls:// scheduler address needs cluster\.tls"),
    Case("yaml_future_version", "workflow version: 7", b_yaml_future_version, E,
         r"^workflow '[^']*future\.yaml': version: workflow version 7 is newer than this "
         r"terraseg understands \(1\); upgrade terraseg$"),
    Case("workflow_missing_scene", "workflow naming a scene that does not exist",
         b_workflow_missing_scene, E,
         r"^cannot read scene '[^']*gone\.tif': file not found" + FILE_FIX),
]
