"""The Makefile's setup on machines unlike the author's: no python3-venv, a half-made .venv, root."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# What `python3 -m venv` does on Debian without python3-venv: a .venv with a python but no pip, exit 1.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && ln -sf "$(command -v python3)" "$3/bin/python"
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  exit 1
fi
exec python3 "$@"
"""


def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return fake


def test_setup_without_python3_venv_says_what_to_install_and_leaves_no_half_made_venv(tmp_path):
    fake = project(tmp_path)
    for attempt in (1, 2):   # the second run must not trip over what the first one left
        r = subprocess.run(["make", "setup", f"PYTHON={fake}"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode != 0, attempt
        assert "apt install python3-venv" in r.stderr, r.stderr
        assert not (tmp_path / ".venv").exists(), attempt


def test_a_venv_without_pip_is_rebuilt_not_reused(tmp_path):
    fake = project(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    os.symlink("/bin/false", tmp_path / ".venv" / "bin" / "python")       # a broken leftover
    r = subprocess.run(["make", "setup", f"PYTHON={fake}"], cwd=tmp_path, capture_output=True, text=True)
    assert "ensurepip is not available" in r.stderr            # it tried to build a new one
    assert not (tmp_path / ".venv").exists()


def test_lab_allows_root_only_as_root(tmp_path):
    project(tmp_path)
    r = subprocess.run(["make", "-n", "-o", ".venv/.cnetlib-installed", "lab"], cwd=tmp_path, capture_output=True,
                       text=True, check=True)
    assert ("--allow-root" in r.stdout) == (os.getuid() == 0), r.stdout
