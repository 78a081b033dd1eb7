"""Execute notebooks in place, like ``jupyter nbconvert --to notebook --execute --inplace``.

Why not nbconvert itself: to mimic the front end of ipywidgets' ``Output`` widget (which
``interactive_output`` uses for every slider in this book), nbclient sends comm messages
on the shell channel from inside its IOPub handler, and now and then the cell's
``execute_reply`` is lost: the kernel sits idle, nbconvert waits forever
(jupyter/nbclient#312; seen here on chapters 02, 06 and 08). Without that mimicry the
Output widget's first rendering lands in the cell like any other output, which is also
what a reader of the static notebook wants to see. Widget state is still saved.

Usage: ``python tools/execute_notebooks.py chapters/01_diffusion_basics.ipynb [...]``
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def execute(path: Path) -> float:
    """Run every cell of ``path`` in a fresh kernel started in its folder; write the outputs back.

    On a failing cell ``path`` is left as it was, and the outputs up to the failure are written
    to ``<tmp>/<name>.failed.ipynb`` (a long run's numbers are not lost with it)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.widget_registry = {}          # no Output-widget mimicry: see the module docstring
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError:
        failed = Path(tempfile.gettempdir()) / f"{path.stem}.failed.ipynb"
        nbformat.write(nb, failed)
        print(f"== {path}: a cell failed; {path} is unchanged, the outputs so far are in {failed}", flush=True)
        raise
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    for name in argv:
        path = Path(name)
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"expected an existing .ipynb file, got {name!r}", file=sys.stderr)
            return 2
        print(f"== {path}", flush=True)
        print(f"== {path}: {execute(path):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
