"""cnetlib: ControlNet from scratch, the library grown by the book's chapters.

Modules follow the paper (Zhang, Rao, Agrawala, ICCV 2023):

* :mod:`cnetlib.data` — Fill50k-style pairs (chapter 01)
* :mod:`cnetlib.diffusion` — schedules, forward process, loss, DDPM/DDIM, CFG (chapter 01)
* :mod:`cnetlib.unet` — the toy SD-shaped UNet F(·; Θ) and its text encoder (chapter 01)
* :mod:`cnetlib.train` — the training loop (chapter 01)
* :mod:`cnetlib.base` — the shipped toy base: recipe, ``load_or_train_base`` (chapter 01)
* :mod:`cnetlib.metrics` — colour and disk measurements of generated images (chapter 01)
* :mod:`cnetlib.checkpoint`, :mod:`cnetlib.viz`, :mod:`cnetlib.runtime` — plumbing

Smoke mode (short CI runs of every chapter) is switched on by ``CNETLIB_SMOKE=1``.
"""
from .runtime import DATA_DIR, FIGURES_DIR, ROOT, pick, save_figure, smoke_mode

__version__ = "0.1.0"
__all__ = ["DATA_DIR", "FIGURES_DIR", "ROOT", "pick", "save_figure", "smoke_mode"]
