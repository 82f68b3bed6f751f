"""Bad input, faults and safety: the generated corpus in ``tests/badinput/``, case by case.

Every case builds its input in ``tmp_path`` (nothing binary is committed), runs
it through the console script or the API, and must end in one clear error line
with exit status 2 (or, for odd but valid input, exit 0 with at most a Python
warning), with no traceback, no partial output and previous outputs untouched.
Known ``src/`` bugs are ``xfail(strict=True)`` with the bug in the reason.
The last test prints the one-line summary into the CI log.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from badinput.cases import CASES, CLEAR_ERROR, DOCUMENTED, Case, partial_output, run_case, verdict

# case id -> (case, verdict, traceback?, partial output?)
RESULTS: dict[str, tuple[Case, str, bool, bool]] = {}


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    setup, outcome = run_case(case, tmp_path)
    result = verdict(case, setup, outcome)
    if result in case.expect and setup.check is not None:
        try:
            setup.check(outcome)
        except AssertionError as exc:
            result = f"check failed: {exc}"
    RESULTS[case.id] = (case, result, outcome.traceback, partial_output(case, setup, outcome))
    assert result in case.expect, f"{case.id}: {result} (want {case.expect})\n{outcome.describe()}"


def test_corpus_covers_enough() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    assert len(CASES) >= 25
    assert sum(c.kind == "cli" for c in CASES) >= 15


def test_badinput_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Print ``badinput: N cases, ...`` into the CI log (runs last: pytest keeps file order)."""
    if not RESULTS:
        pytest.skip("no bad-input case ran")
    known = {k: v for k, v in RESULTS.items() if v[0].xfail}
    rest = {k: v for k, v in RESULTS.items() if not v[0].xfail}
    clear = sum(v[1] == CLEAR_ERROR for v in rest.values())
    documented = sum(v[1] == DOCUMENTED for v in rest.values())
    tracebacks = sum(v[2] for v in rest.values())
    partial = sum(v[3] for v in rest.values())
    line = (
        f"badinput: {len(RESULTS)} cases, {clear} clear errors, {documented} documented "
        f"warnings, {tracebacks} tracebacks, {partial} partial outputs"
    )
    if known:
        line += (
            f"; {len(known)} known src bugs xfailed ({sum(v[2] for v in known.values())} "
            f"tracebacks, {sum(v[3] for v in known.values())} partial outputs among them: "
            f"{', '.join(sorted(known))})"
        )
    with capsys.disabled():
        print(f"\n{line}")
    assert tracebacks == 0 and partial == 0, line
    assert clear + documented == len(rest), line
