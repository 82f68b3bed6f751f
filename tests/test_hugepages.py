"""The CLI re-executes itself once with glibc's huge-page tunable (terraseg.cli.hugepages)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from terraseg.cli import hugepages as hp

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc/Linux only"
)


@pytest.fixture
def thp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    monkeypatch.setattr(hp, "_THP", path)
    return path


@glibc
def test_env_adds_the_tunable(thp: Path) -> None:
    env = hp.hugepage_env({"PATH": "/bin"})
    assert env is not None and env["GLIBC_TUNABLES"] == hp.TUNABLE and env["PATH"] == "/bin"
    env = hp.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{hp.TUNABLE}"


@glibc
def test_env_left_alone(thp: Path) -> None:
    assert hp.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # user's choice
    assert hp.hugepage_env({"TERRASEG_HUGEPAGES": "0"}) is None
    thp.write_text("always madvise [never]\n")
    assert hp.hugepage_env({}) is None
    thp.unlink()
    assert hp.hugepage_env({}) is None  # no THP information: do nothing


@glibc
def test_reexec_runs_the_same_command_once(thp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(hp.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "terraseg", "run", "x.yaml"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("TERRASEG_HUGEPAGES", raising=False)
    hp.reexec_with_hugepages()
    (exe, argv, env), = calls
    assert exe == sys.executable and argv == [sys.executable, "-m", "terraseg", "run", "x.yaml"]
    assert hp.TUNABLE in env["GLIBC_TUNABLES"]
    monkeypatch.setenv("GLIBC_TUNABLES", hp.TUNABLE)  # the re-executed process: no second exec
    hp.reexec_with_hugepages()
    assert len(calls) == 1


@glibc
def test_in_process_main_under_another_program_does_not_reexec(
    thp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a test calling terraseg.cli.main.main() must not restart pytest
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(hp.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest", "tests"])
    monkeypatch.setattr(sys, "argv", ["terraseg", "models"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    hp.reexec_with_hugepages()
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "/venv/bin/pytest", "tests"])
    hp.reexec_with_hugepages()
    assert calls == []
    assert hp._runs_terraseg([sys.executable, "/venv/bin/terraseg", "run"], ["/venv/bin/terraseg"])


@glibc
def test_console_script_really_gets_the_tunable(tmp_path: Path) -> None:
    # the installed command re-executes itself; its environment then carries the tunable
    if hp._thp_mode() in (None, "never"):
        pytest.skip("transparent huge pages are off on this machine")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "from terraseg.cli import hugepages as _hugepages\n"
        "_hugepages.reexec_with_hugepages()\n"
        "print(os.environ.get('GLIBC_TUNABLES', ''))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("GLIBC_TUNABLES", "TERRASEG_HUGEPAGES")}
    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.strip() == hp.TUNABLE
