"""Every chapter's first cell on a simulated Colab: clone once, install only what is not importable,
harmless when run twice, retried after a failed install (cnetlib.colab). First with fakes for git
and pip, then for real in a fresh environment (the last test: a few minutes)."""
import os
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import jupytext
import pytest

from cnetlib import colab

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def first_cell(py: Path) -> str:
    return next(c.source for c in jupytext.read(py).cells if c.cell_type == "code")


def test_missing_modules_checks_importability(monkeypatch):
    assert colab.missing_modules(("sd",)) == []                      # this environment has everything
    monkeypatch.setitem(sys.modules, "diffusers", None)               # as if it were not installed
    assert colab.missing_modules(("sd",)) == ["diffusers"] and colab.missing_modules() == []
    with pytest.raises(ValueError, match=r"expected names from \['sd'\], got \['book'\]"):
        colab.missing_modules(("book",))


def test_ensure_installed_runs_pip_only_for_what_is_missing_and_retries_after_a_failure(monkeypatch):
    calls = []

    def pip_ok(cmd, **kw):
        calls.append(cmd)
        monkeypatch.delitem(sys.modules, "diffusers")                 # the install made it importable
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def pip_down(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nNetwork is unreachable")

    assert colab.ensure_installed(ROOT, ("sd",), run=pip_ok) == [] and calls == []   # nothing missing: no pip
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(RuntimeError, match="still missing: diffusers.*Network is unreachable.*rerun this cell"):
        colab.ensure_installed(ROOT, ("sd",), run=pip_down)
    assert colab.ensure_installed(ROOT, ("sd",), run=pip_ok) == ["diffusers"]        # the rerun retries
    assert calls[-1][-2:] == ["-e", f"{ROOT}[sd]"] and len(calls) == 2
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install ipywidgets"):
        colab.ensure_installed(ROOT, run=pip_ok)
    with pytest.raises(FileNotFoundError, match="delete the folder and rerun the cell"):
        colab.ensure_installed(ROOT / "chapters", run=pip_ok)


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_first_cell_on_a_simulated_colab_clones_once_and_runs_twice(py, tmp_path, monkeypatch):
    ran = []

    def fake_run(cmd, *a, **kw):
        ran.append(cmd)
        if cmd[:2] == ["git", "clone"]:                                # the clone: a link to this checkout
            os.symlink(ROOT, cmd[-1])
        elif cmd[:2] == ["rm", "-rf"]:
            assert not Path(cmd[-1]).exists() or Path(cmd[-1]).is_dir()
            subprocess.call(["rm", "-rf", cmd[-1]])
        else:
            raise AssertionError(f"unexpected command on a runtime that has every module: {cmd}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "controlnet-book").mkdir()                             # a clone that failed halfway
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = first_cell(py)
    assert "ensure_installed(book" in source and ('extras=("sd",)' in source) == (py.name[:2] in ("08", "09"))
    for _ in range(2):
        exec(compile(source, str(py), "exec"), {"__name__": "__main__"})
    assert [c[:2] for c in ran] == [["rm", "-rf"], ["git", "clone"]]   # cloned once, pip never needed
    assert sys.path.count(str(tmp_path / "controlnet-book")) == 1 and sys.path[0] == str(tmp_path / "controlnet-book")


def test_every_chapter_has_the_same_colab_cell_but_its_extras():
    cells = {first_cell(py).replace('extras=("sd",)', "extras=()") for py in CHAPTERS}
    assert len(cells) == 1, "the chapters' Colab cells differ: keep them one cell (cnetlib.colab does the work)"


# ----------------------------------------------------------------------------------
# A clean Colab runtime, simulated for real: every chapter's first cell in a fresh virtual
# environment that holds only torch and ipywidgets 7 (what the book cannot assume beyond a
# clean Colab), with ``google.colab`` importable and a ``/content``-like working folder. The
# cells really clone the book (from this checkout, through ``CNETLIB_REPO``) and really run
# pip against the package index; the first attempts fail (a clone URL that does not exist,
# then an index that cannot be reached) and the reruns must recover. Each chapter's cell then
# runs twice in a row in one interpreter, as a reader pressing Run twice.
#
# torch is not downloaded: the fresh environment sees this machine's torch (and what it
# requires) through a ``.pth`` file, as Colab ships it preinstalled. Takes a few minutes (pip
# downloads the book's dependencies, the Stable Diffusion stack included).
# ----------------------------------------------------------------------------------


def requirement_closure(name: str) -> list[metadata.Distribution]:
    """``name``'s distribution and every distribution it requires (markers evaluated here, no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = {}, [name]
    while todo:
        key = canonicalize_name(todo.pop())
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue   # an optional requirement this environment does not have
        seen[key] = dist
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return list(seen.values())


def link_preinstalled(target: Path, names: list[str]) -> None:
    """Symlink the top-level files and folders of ``names`` and their requirements into ``target``."""
    target.mkdir()
    for dist in (d for n in names for d in requirement_closure(n)):
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (target / top).exists():
                (target / top).symlink_to(src)


def run_cell(py: Path, source: str, cwd: Path, env: dict, times: int = 1) -> subprocess.CompletedProcess:
    """The cell run ``times`` times in one fresh interpreter, as in one kernel, with google.colab imported."""
    script = ("import google.colab\n"
              f"SOURCE = {source!r}\n"
              f"for _ in range({times}):\n"
              f"    exec(compile(SOURCE, {str(py.name)!r}, 'exec'), {{'__name__': '__main__'}})\n"
              "    print('<cell done>', flush=True)\n")
    return subprocess.run([str(env["PY"]), "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def clean_colab(tmp_path_factory):
    """A fresh venv with torch (linked) and ipywidgets 7 (pip), google.colab, and /content."""
    if not (ROOT / ".git").exists():
        pytest.skip("the simulation clones the book from this checkout, which is not a git repository")
    tmp = tmp_path_factory.mktemp("colab")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    link_preinstalled(tmp / "preinstalled", ["torch"])
    (site / "colab_preinstalled.pth").write_text(str(tmp / "preinstalled") + "\n")
    (site / "google" / "colab").mkdir(parents=True)
    (site / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s own module."""\n')
    got = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "ipywidgets>=7,<8"],
                         capture_output=True, text=True)
    if got.returncode:   # the first download: without a reachable package index the simulation cannot run
        pytest.skip(f"no package index reachable (pip install ipywidgets<8 failed: {got.stderr.strip()[-300:]})")
    content = tmp / "content"
    content.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PY=str(py), PATH=f"{venv / 'bin'}:{env['PATH']}", CNETLIB_REPO=ROOT.as_uri(),
               PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    return {"py": py, "content": content, "env": env}


def test_a_clean_colab_runtime_recovers_from_failed_attempts_and_runs_each_cell_twice(clean_colab):
    py, content, env = clean_colab["py"], clean_colab["content"], clean_colab["env"]
    missing = subprocess.run([str(py), "-c", "import torch, ipywidgets; import numpy"], capture_output=True, text=True)
    assert "No module named 'numpy'" in missing.stderr      # clean: torch and ipywidgets only
    first, sd = CHAPTERS[0], next(p for p in CHAPTERS if 'extras=("sd",)' in first_cell(p))

    # 1. A clone URL that does not exist: a message naming CNETLIB_REPO, nothing left behind.
    bad = run_cell(first, first_cell(first), content, {**env, "CNETLIB_REPO": str(content / "no-such-repo")})
    assert bad.returncode != 0 and "set the CNETLIB_REPO environment variable" in bad.stderr, bad.stderr[-2000:]
    assert not (content / "controlnet-book" / "cnetlib").exists()

    # 2. The clone works but pip cannot reach its index: a message saying what to do.
    offline = {**env, "PIP_CONFIG_FILE": os.devnull,    # no local wheel folders or mirrors from pip's config
               "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    down = run_cell(first, first_cell(first), content, offline)
    assert down.returncode != 0 and "Check the runtime's internet connection and rerun this cell" in down.stderr, \
        down.stderr[-2000:]
    assert (content / "controlnet-book" / "cnetlib" / "colab.py").is_file()

    # 3. Every chapter's cell, twice in one interpreter: the first chapter installs the core,
    #    the first Stable Diffusion chapter its extra (the book is cloned already by then).
    for py_ in CHAPTERS:
        r = run_cell(py_, first_cell(py_), content, env, times=2)
        assert r.returncode == 0 and r.stdout.count("<cell done>") == 2, (py_.name, r.stdout[-1000:], r.stderr[-3000:])
        second = r.stdout.split("<cell done>")[1]
        assert "installing" not in second                     # the rerun finds everything importable
        installs = r.stdout.count("installing the book's dependencies")
        assert installs == (1 if py_ in (first, sd) else 0), (py_.name, r.stdout)
        assert "Cloning into" not in r.stderr                 # cloned once, in step 2

    # 4. What the chapters import, imported for real in a new interpreter.
    check = ("import sys; sys.path.insert(0, 'controlnet-book')\n"
             "import cnetlib, ipywidgets, diffusers, transformers, accelerate, controlnet_aux, torchvision\n"
             "from cnetlib.sd import SDParts\n"
             "print(cnetlib.__file__, ipywidgets.__version__)\n")
    ok = subprocess.run([str(py), "-c", check], cwd=content, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    path, version = ok.stdout.split()
    assert Path(path).is_relative_to(content / "controlnet-book") and version.startswith("7.")   # not upgraded
