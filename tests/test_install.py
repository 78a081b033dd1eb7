"""A plain (non-editable) `pip install` of cnetlib: shipped data inside the package, nothing written
into site-packages, and a clear error naming the extra when an optional dependency is missing."""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """cnetlib built as a wheel from a copy of the sources and installed into a bare folder."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT / "cnetlib", src / "cnetlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data", src / "data", ignore=shutil.ignore_patterns("state.pt"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp / "wheel")], check=True, capture_output=True)
    wheel = next((tmp / "wheel").glob("cnetlib-*.whl"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    return tmp, site


def run_installed(tmp: Path, site: Path, code: str, **env) -> str:
    environ = {**os.environ, "PYTHONPATH": str(site), "HOME": str(tmp / "home"), **env}
    environ.pop("CNETLIB_HOME", None) if "CNETLIB_HOME" not in env else None
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=environ, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_plain_install_reads_its_shipped_data_and_writes_outside_site_packages(installed):
    tmp, site = installed
    out = run_installed(tmp, site, """
import cnetlib, cnetlib.runtime as r
from cnetlib.base import BASE_CHECKPOINT, load_or_train_base
from cnetlib.experiments.runs import load_run, SHIPPED
base = load_or_train_base(progress=False)
print(cnetlib.__file__); print(r.SOURCE_TREE); print(r.DATA_DIR); print(r.ROOT); print(BASE_CHECKPOINT.is_file())
print(load_run(SHIPPED / 'seed0').summary['steps'])
""")
    file, source, data, root, has_base, steps = out.splitlines()
    assert file.startswith(str(site)) and source == "False"          # the installed copy, not the clone
    assert data == str(site / "cnetlib" / "shipped") and has_base == "True" and int(steps) > 0
    assert root == str(tmp / "home" / ".cache" / "cnetlib")          # runs/ and figures/ go to the user cache
    assert not any(p.name in ("runs", "figures") for p in site.rglob("*"))
    out = run_installed(tmp, site, "import cnetlib.runtime as r; print(r.ROOT)", CNETLIB_HOME=str(tmp / "mine"))
    assert out == str(tmp / "mine")


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    from cnetlib.runtime import require_extra

    with pytest.raises(ModuleNotFoundError, match=r'needs no_such_module_x, which is not installed: pip install "cnetlib\[sd\]"'):
        require_extra("the SD bridge", ("numpy", "no_such_module_x"))
    require_extra("the toy", ("numpy", "torch"))                       # present: nothing to say
    monkeypatch.setitem(sys.modules, "diffusers", None)                 # as if the [sd] extra were not installed
    monkeypatch.delitem(sys.modules, "cnetlib.sd", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"cnetlib.sd needs diffusers.*cnetlib\[sd\]"):
        importlib.import_module("cnetlib.sd")
