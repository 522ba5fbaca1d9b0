"""The Makefile finds a Python 3.12 quietly: a pyenv shim that has no such version prints its complaint to the
probe, never to the person who typed `make`."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYENV_COMPLAINT = "pyenv: python3.12: command not found"


def _shim(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def _dry_run(path: str, home: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PATH": path, "HOME": str(home)}
    environment.pop("PYTHON", None)
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "check-system"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )


def test_a_pyenv_shim_without_the_version_is_skipped_without_a_word(tmp_path: Path) -> None:
    shims, python = tmp_path / "shims", tmp_path / "python"
    shims.mkdir()
    python.mkdir()
    # what pyenv's shim does when the global version lacks python3.12: complain on both streams, exit 127
    _shim(shims, "python3.12", f'echo "{PYENV_COMPLAINT}"; echo "{PYENV_COMPLAINT}" >&2; exit 127')
    _shim(python, "python3", 'exec /usr/bin/env -i /bin/true "$@"')
    ran = _dry_run(f"{shims}:{python}:/usr/bin:/bin", tmp_path)
    assert PYENV_COMPLAINT not in ran.stdout + ran.stderr and ran.stderr == ""
    assert ran.stdout.strip().endswith(" local/check_system.py")
    assert not ran.stdout.startswith("python3.12 "), "the shim that cannot run must be passed over"


def test_the_first_python_that_runs_is_the_one_used(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.mkdir()
    _shim(python, "python3.12", "exit 0")
    ran = _dry_run(f"{python}:/usr/bin:/bin", tmp_path)
    assert ran.stdout.strip() == "python3.12 local/check_system.py" and ran.stderr == ""
