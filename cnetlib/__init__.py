"""cnetlib: ControlNet from scratch, the library grown by the book's chapters.

Modules follow the paper (Zhang, Rao, Agrawala, ICCV 2023):

* :mod:`cnetlib.data` — Fill50k-style pairs, colour hints, lazy 512 px pairs (chapters 01, 07, 09)
* :mod:`cnetlib.diffusion` — schedules, forward process, loss, DDPM/DDIM, CFG (chapter 01)
* :mod:`cnetlib.unet` — the toy SD-shaped UNet F(·; Θ) and its text encoder (chapter 01)
* :mod:`cnetlib.train` — the training loops: the toy base, and ControlNet on it (chapters 01, 04)
* :mod:`cnetlib.base` — the shipped toy base: recipe, ``load_or_train_base`` (chapter 01)
* :mod:`cnetlib.metrics` — colours, clean disks and placement of generated images (chapters 01, 04)
* :mod:`cnetlib.stats` — 95 % bootstrap intervals and comparisons for every table (chapters 01, 04-07)
* :mod:`cnetlib.controlnet` — zero convolution Z, trainable copy Θc, condition encoder E,
  ``ControlNet``, ``ControlledUNet`` (chapters 02-03)
* :mod:`cnetlib.probes` — gradients and connector damage measured (chapter 02)
* :mod:`cnetlib.fidelity` — condition fidelity of samples (chapters 04-07)
* :mod:`cnetlib.convergence` — the sudden-convergence detector (chapter 04)
* :mod:`cnetlib.mechanism` — why it is sudden: snapshots, condition gain, the sampler at any α (chapter 05)
* :mod:`cnetlib.guidance` — CFG with control: four modes, w_i, several ControlNets (chapters 04-07)
* :mod:`cnetlib.experiments` — the command-line experiments of chapters 01 (base levers), 04 and 05
* :mod:`cnetlib.sd` — ControlNet on Stable Diffusion with diffusers (chapter 08)
* :mod:`cnetlib.train_sd` — training it with accelerate, and what it costs (chapter 09)
* :mod:`cnetlib.checkpoint`, :mod:`cnetlib.viz`, :mod:`cnetlib.runtime`, :mod:`cnetlib.checks`, :mod:`cnetlib.colab` — plumbing

Smoke mode (short CI runs of every chapter) is switched on by ``CNETLIB_SMOKE=1``.
"""
from .runtime import DATA_DIR, FIGURES_DIR, ROOT, pick, save_figure, smoke_mode

__version__ = "0.2.0"
__all__ = ["DATA_DIR", "FIGURES_DIR", "ROOT", "pick", "save_figure", "smoke_mode"]
