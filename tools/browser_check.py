"""Open every chapter that has widgets in a real JupyterLab in Chromium, run it, move each widget.

``make test-browser`` runs this (it is not part of ``make test``). For each chapter it:

1. opens the notebook in JupyterLab (started here, on a free port, smoke mode, offline);
2. runs all cells from the Run menu and waits until the kernel is done;
3. for every slider, dropdown and toggle in a widget box that holds a figure
   (``widgets.interactive_output``): moves it, waits, and asserts that the figure's image
   changed and that no widget error or traceback shows.

Chromium comes from the system (Debian: ``apt install chromium``), driven by the
``playwright`` Python package through ``executable_path``; ``playwright install`` is never
needed. Usage: ``python tools/browser_check.py [chapters/06_guidance_modes.ipynb ...]``
(default: every chapter whose source uses ``interactive_output``). JupyterLab opens copies
under ``build/browser/`` (so its autosave never touches the committed notebooks); the
screenshots of each chapter after its checks land there too.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "browser"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
#: how long one chapter may take to run all its cells in smoke mode, and one widget move to redraw
RUN_TIMEOUT_S = 900
REDRAW_TIMEOUT_S = 180


def find_chromium() -> str:
    """The system Chromium: ``$CHROMIUM`` or the first of :data:`CHROMIUM_CANDIDATES` on the PATH."""
    path = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_CANDIDATES)), None)
    if not path:
        sys.exit("browser check: no Chromium found. Install Debian's (sudo apt install chromium) or set "
                 "CHROMIUM=/path/to/chrome; 'playwright install' is not needed.")
    return path


def widget_chapters() -> list[Path]:
    """Chapters whose source draws a figure from widgets."""
    return [py.with_suffix(".ipynb") for py in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
            if "interactive_output" in py.read_text()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, token: str) -> subprocess.Popen:
    """JupyterLab on ``port``, rooted at :data:`OUT`, chapters in smoke mode and offline."""
    env = {**os.environ, "CNETLIB_SMOKE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={OUT}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    OUT.mkdir(parents=True, exist_ok=True)
    lab = subprocess.Popen(cmd, cwd=OUT, env=env, stdout=open(OUT / "jupyterlab.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if lab.poll() is not None:
            sys.exit(f"browser check: JupyterLab exited with code {lab.returncode}; see {OUT / 'jupyterlab.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return lab
        except OSError:
            time.sleep(1)
    lab.terminate()
    sys.exit(f"browser check: JupyterLab did not answer within 120 s; see {OUT / 'jupyterlab.log'}")


def wait_idle(page, timeout_s: float) -> None:
    """Until no cell is running or queued (``[*]``) and the kernel says idle."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        prompts = page.locator(".jp-Notebook .jp-InputPrompt").all_inner_texts()
        busy = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        if prompts and not any("*" in p for p in prompts) and not busy:
            return
        time.sleep(1)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s")


def errors_in(root) -> list[str]:
    """Tracebacks and widget errors shown under ``root``."""
    texts = root.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr'], "
                         ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()
    found = [t.strip().splitlines()[-1][:200] for t in texts if "Error" in t or "Traceback" in t]
    found += [t[:200] for t in root.locator(".jupyter-widgets").all_inner_texts() if "Error displaying widget" in t]
    return found


def figure_of(box) -> str:
    """The figure an interactive box shows: the sources of the images in its Output widget."""
    return "|".join(img.get_attribute("src") or "" for img in box.locator(".widget-output img").all())


def controls_of(box) -> list[tuple[str, object]]:
    """(description, locator) for each slider, dropdown and toggle-button group in a widget box."""
    found = []
    for kind in (".widget-slider", ".widget-dropdown", ".widget-toggle-buttons"):
        for k in range(box.locator(kind).count()):
            control = box.locator(kind).nth(k)
            label = control.locator(".widget-label").first
            found.append((f"{kind[8:]} {label.inner_text() if label.count() else k}", control))
    return found


def move(control, kind: str) -> None:
    """Change one control's value the way a reader would."""
    if kind.startswith("slider"):
        handle = control.locator(".noUi-handle").first
        handle.focus()
        now, top = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")
        at_the_end = now is not None and top is not None and float(now) >= float(top)
        key = "ArrowLeft" if at_the_end else "ArrowRight"   # a slider at its maximum can only go down
        handle.press(key)
        handle.press(key)
        handle.evaluate("h => h.blur()")
    elif kind.startswith("dropdown"):
        select = control.locator("select")
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.selectedIndex")
        select.select_option(index=(current + 1) % len(options))
    else:
        buttons = control.locator("button")
        pressed = [b.get_attribute("class") or "" for b in buttons.all()]
        target = next(k for k, c in enumerate(pressed) if "mod-active" not in c)
        buttons.nth(target).click()


def check_chapter(browser, port: int, token: str, notebook: Path) -> list[str]:
    """Run one chapter in the browser and move each widget; the problems found (empty: all good)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    rel = notebook.relative_to(OUT).as_posix()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = []
    try:
        page.goto(f"http://127.0.0.1:{port}/lab/tree/{rel}?reset&token={token}")   # reset: only this notebook open
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
        select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
        try:   # a kernel picker shows when the kernel is not preselected: take the notebook's own (Python 3)
            select.wait_for(timeout=15_000)
            select.click()
        except PlaywrightTimeout:
            pass
        page.locator(".jp-Notebook-ExecutionIndicator").first.wait_for(timeout=120_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        time.sleep(3)
        wait_idle(page, RUN_TIMEOUT_S)
        problems += [f"after running: {e}" for e in errors_in(page)]
        boxes = page.locator(".jp-OutputArea-output .widget-vbox:has(.widget-output)")
        if not boxes.count():
            problems.append("no widget box with a figure rendered (is the widget manager installed?)")
        for b in range(boxes.count()):
            box = boxes.nth(b)
            box.scroll_into_view_if_needed()
            for kind, control in controls_of(box):
                before = figure_of(box)
                move(control, kind)
                deadline = time.time() + REDRAW_TIMEOUT_S
                while figure_of(box) in (before, "") and time.time() < deadline:
                    time.sleep(0.5)
                wait_idle(page, REDRAW_TIMEOUT_S)
                after = figure_of(box)
                status = "figure changed" if after and after != before else "FIGURE DID NOT CHANGE"
                print(f"  {notebook.stem}: box {b}, {kind}: {status}", flush=True)
                if status != "figure changed":
                    problems.append(f"box {b}, {kind}: the figure did not change")
                problems += [f"box {b}, {kind}: {e}" for e in errors_in(box)]
        page.screenshot(path=str(OUT / f"{notebook.stem}.png"), full_page=False)
    except Exception as e:  # a timeout or a missing element: report it with the chapter, keep checking others
        problems.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        page.screenshot(path=str(OUT / f"{notebook.stem}-failed.png"))
    finally:
        page.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="chapters to check (default: every chapter with widgets)")
    a = p.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("browser check: the 'playwright' package is missing: pip install playwright "
                 "(no 'playwright install' needed: the system Chromium is used)")
    OUT.mkdir(parents=True, exist_ok=True)
    notebooks = []
    for source in [n.resolve() for n in a.notebooks] or widget_chapters():
        if not source.is_file():
            sys.exit(f"browser check: expected a notebook, got {source} (no such file)")
        for stale in OUT.glob(f"{source.stem}.*"):   # an earlier copy's jupytext pair would refuse the new copy
            stale.unlink()
        notebooks.append(Path(shutil.copy2(source, OUT / source.name)))   # a copy: autosave cannot touch the book
    chromium = find_chromium()
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(port, token)
    failed = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for nb in notebooks:
                start = time.time()
                print(f"{nb.name}: running in JupyterLab…", flush=True)
                problems = check_chapter(browser, port, token, nb)
                print(f"{nb.name}: {'ok' if not problems else 'FAILED'} ({time.time() - start:.0f} s)", flush=True)
                if problems:
                    failed[nb.name] = problems
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:   # kernels still shutting down
            lab.kill()
            lab.wait()
    for name, problems in failed.items():
        print(f"\n{name}:\n  " + "\n  ".join(problems))
    print(f"\n{len(notebooks) - len(failed)} of {len(notebooks)} chapters passed; screenshots in "
          f"{OUT.relative_to(ROOT)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
