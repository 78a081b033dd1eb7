"""Diagrams drawn by code: the pictures the chapters open with.

Every function returns a matplotlib figure built from the book's own objects (a UNet's
connection table, a measured gradient front, the mode table of :mod:`cnetlib.control`),
so a diagram cannot drift from the code it describes. One colour code throughout:

* blue: **frozen** (the base F(·; Θ), never updated);
* orange: **trainable** (the copy F(·; Θc), the condition encoder E);
* white with a dashed edge: a **zero convolution** Z (weight and bias 0 at step 0);
* an orange ⊕: where a ControlNet residual r_i is added.

Chapter 01 draws the toy UNet's 7 connection points (:func:`unet_diagram`), chapter 03 the
ControlNet block and the whole ControlNet (:func:`controlnet_block_diagram`, ``unet_diagram(...,
controlnet=True)``), chapter 02 the gradient front (:func:`gradient_front_diagram`), chapter 06
where control enters classifier-free guidance (:func:`cfg_control_diagram`), chapter 07 two
ControlNets summed (:func:`multi_control_diagram`), chapter 08 SD 1.5's 13 connections, and
chapters 04, 05 and 09 their loops (:func:`flow_diagram`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch

FROZEN = {"facecolor": "#deebf7", "edgecolor": "#3182bd"}
TRAINABLE = {"facecolor": "#fdd0a2", "edgecolor": "#e6550d"}
ZERO = {"facecolor": "white", "edgecolor": "#525252", "linestyle": (0, (3, 2))}
NEUTRAL = {"facecolor": "#f0f0f0", "edgecolor": "#737373"}
KINDS = {"frozen": FROZEN, "trainable": TRAINABLE, "zero": ZERO, "neutral": NEUTRAL}
RESIDUAL = "#e6550d"
GRADIENT = "#31a354"


def _box(ax, x: float, y: float, w: float, h: float, text: str, kind: str = "neutral", size: float = 8.0,
         weight: str = "normal") -> tuple[float, float, float, float]:
    """A rounded box centred at (x, y); returns its (left, right, bottom, top)."""
    style = KINDS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                linewidth=1.3, **style))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, fontweight=weight)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "#252525", lw: float = 1.2,
           style: str = "-|>", ls: str = "-", rad: float = 0.0) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, linewidth=lw,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def _line(ax, points: Sequence[tuple[float, float]], color: str = "#252525", lw: float = 1.2, ls: str = "-") -> None:
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle=ls, solid_capstyle="round")


def _plus(ax, x: float, y: float, r: float = 0.13, color: str = RESIDUAL) -> None:
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=color, linewidth=1.5, zorder=5))
    ax.text(x, y, "+", ha="center", va="center", fontsize=9, color=color, fontweight="bold", zorder=6)


def _legend(ax, items: Sequence[str], loc: str = "lower center", ncol: int | None = None,
            labels: Mapping[str, str] | None = None, **kw) -> None:
    labels = {"frozen": "frozen: F(·; Θ)", "trainable": "trainable: Θc, E", "zero": "zero convolution Z (0 at step 0)",
              "neutral": "data / computation", **(labels or {})}
    handles = [Patch(label=labels[k], linewidth=1.3, **KINDS[k]) for k in items]
    ax.legend(handles=handles, loc=loc, ncol=ncol or len(items), fontsize=7.5, frameon=False, **kw)


def _finish(fig, ax, xlim: tuple[float, float], ylim: tuple[float, float], title: str | None):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------
# The UNet and its connection points (chapters 01, 03, 08)
# ----------------------------------------------------------------------------------
def unet_diagram(connections: Sequence, *, controlnet: bool = False, title: str | None = None):
    """A UNet drawn from its connection table: one encoder block per connection (the input
    conv, ResNets, downsamplers), the middle block, and the decoder blocks that consume the
    skips in reverse. Each skip carries an orange ⊕: where ControlNet adds its residual r_i,
    with i and the feature map's side h_i beside it (the reference code's
    ``h = cat([h, hs.pop() + control.pop()])``).

    ``connections``: the ``Connection`` rows of a ``ToyUNet`` (``model.connections``) or of
    ``SDControlNet.connection_table()``: the last one must be the middle block. With
    ``controlnet=True`` the trainable copy of the encoder and middle block is drawn on the
    left, each output through its zero convolution Z into its ⊕.
    """
    conns = list(connections)
    if not conns or conns[-1].kind != "middle":
        raise ValueError(f"connections: expected a connection table ending with the middle block, got "
                         f"{[c.kind for c in conns]}")
    skips, mid = conns[:-1], conns[-1]
    n = len(skips)
    row = 0.66
    width = 10.5 if controlnet else 7.4
    fig, ax = plt.subplots(figsize=(width, 1.2 + row * (n + 2)))
    x_enc, x_plus, x_dec, x_copy, x_z = 0.0, 2.5, 5.0, -3.1, -1.55
    bw, bh = 1.7, 0.42
    ys = [-k * row for k in range(n)]
    y_mid = -(n + 0.6) * row

    def label(c) -> str:
        return f"{c.kind} · {c.channels} ch"

    # the frozen base: encoder column, middle block, decoder column
    ax.text(x_enc, row * 0.95, "x_t (noisy input)", ha="center", fontsize=8)
    _arrow(ax, (x_enc, row * 0.75), (x_enc, ys[0] + bh / 2))
    for k, (c, y) in enumerate(zip(skips, ys)):
        _box(ax, x_enc, y, bw, bh, label(c), "frozen", size=7)
        if k + 1 < n:
            _arrow(ax, (x_enc, y - bh / 2), (x_enc, ys[k + 1] + bh / 2))
        _box(ax, x_dec, y, bw, bh, f"decoder block {n - 1 - k}", "frozen", size=7)
        if k + 1 < n:
            _arrow(ax, (x_dec, ys[k + 1] + bh / 2), (x_dec, y - bh / 2))
        # skip connection, with the place where ControlNet adds r_k
        _arrow(ax, (x_enc + bw / 2, y), (x_plus - 0.13, y), color="#3182bd")
        _plus(ax, x_plus, y)
        _arrow(ax, (x_plus + 0.13, y), (x_dec - bw / 2, y), color="#3182bd")
        ax.text(x_plus, y + 0.15, f"r_{c.index}  (h = {c.resolution})", ha="center", va="bottom", fontsize=6.5,
                color=RESIDUAL)
    _box(ax, (x_enc + x_dec) / 2 - 0.6, y_mid, bw, bh, f"middle · {mid.channels} ch", "frozen", size=7)
    _line(ax, [(x_enc, ys[-1] - bh / 2), (x_enc, y_mid), ((x_enc + x_dec) / 2 - 0.6 - bw / 2, y_mid)])
    _plus(ax, x_dec - 0.55, y_mid)
    ax.text(x_dec - 0.55, y_mid + 0.15, f"r_{mid.index}  (h = {mid.resolution})", ha="center", va="bottom",
            fontsize=6.5, color=RESIDUAL)
    _line(ax, [((x_enc + x_dec) / 2 - 0.6 + bw / 2, y_mid), (x_dec - 0.68, y_mid)])
    _arrow(ax, (x_dec - 0.42, y_mid), (x_dec, y_mid), color="#252525")
    _arrow(ax, (x_dec, y_mid), (x_dec, ys[-1] - bh / 2))
    _arrow(ax, (x_dec, ys[0] + bh / 2), (x_dec, row * 0.75))
    ax.text(x_dec, row * 0.95, "output (v̂ or ε̂)", ha="center", fontsize=8)
    ax.text(x_plus, row * 0.95, f"{n} skips + middle = {len(conns)} connections", ha="center", fontsize=8,
            color=RESIDUAL, fontweight="bold")
    items = ["frozen"]
    if controlnet:
        items += ["trainable", "zero"]
        ax.text(x_copy, row * 0.95, "x_t", ha="center", fontsize=8)
        _arrow(ax, (x_copy, row * 0.75), (x_copy, ys[0] + bh / 2), color=RESIDUAL)
        x_e = x_copy - bw / 2 - 0.95       # the condition encoder E: c in, c_f out, added after the input conv
        _box(ax, x_e, ys[0] + row * 0.9, 1.1, bh, "E (ends in\nZ(·; Θz1))", "trainable", size=6.5)
        ax.text(x_e, ys[0] + row * 0.9 + bh / 2 + 0.12, "control image c", ha="center", va="bottom", fontsize=7.5)
        _line(ax, [(x_e, ys[0] + row * 0.9 - bh / 2), (x_e, ys[0])], color=RESIDUAL)
        _arrow(ax, (x_e, ys[0]), (x_copy - bw / 2, ys[0]), color=RESIDUAL)
        ax.text(x_e - 0.1, ys[0] - 0.15, "+ c_f, after\nthe input conv", ha="center", va="top", fontsize=6.5,
                color=RESIDUAL)
        for k, (c, y) in enumerate(zip(skips, ys)):
            _box(ax, x_copy, y, bw, bh, label(c), "trainable", size=7)
            if k + 1 < n:
                _arrow(ax, (x_copy, y - bh / 2), (x_copy, ys[k + 1] + bh / 2))
            _box(ax, x_z, y, 0.42, bh * 0.8, "Z", "zero", size=7)
            _line(ax, [(x_copy + bw / 2, y), (x_z - 0.21, y)], color=RESIDUAL)
            low = y - row / 2
            _line(ax, [(x_z + 0.21, y), (x_z + 0.35, y), (x_z + 0.35, low), (x_plus, low)], color=RESIDUAL, lw=1.0)
            _arrow(ax, (x_plus, low), (x_plus, y - 0.13), color=RESIDUAL, lw=1.0)
        y_cm = y_mid
        _box(ax, x_copy, y_cm, bw, bh, f"middle · {mid.channels} ch", "trainable", size=7)
        _line(ax, [(x_copy, ys[-1] - bh / 2), (x_copy, y_cm + bh / 2)], color=RESIDUAL)
        _box(ax, x_z, y_cm, 0.42, bh * 0.8, "Z", "zero", size=7)
        _line(ax, [(x_copy + bw / 2, y_cm), (x_z - 0.21, y_cm)], color=RESIDUAL)
        low = y_cm - row * 0.75
        _line(ax, [(x_z + 0.21, y_cm), (x_z + 0.35, y_cm), (x_z + 0.35, low), (x_dec - 0.55, low)], color=RESIDUAL,
              lw=1.0)
        _arrow(ax, (x_dec - 0.55, low), (x_dec - 0.55, y_mid - 0.13), color=RESIDUAL, lw=1.0)
    _legend(ax, items, loc="lower center", bbox_to_anchor=(0.5, -0.06))
    left = x_copy - bw / 2 - 1.6 if controlnet else x_enc - bw / 2 - 0.9
    return _finish(fig, ax, (left, x_dec + bw / 2 + 0.3), (y_mid - row * 1.5, row * 1.3),
                   title or ("ControlNet on a UNet: copy, zero convs, residuals" if controlnet
                             else "the UNet and its ControlNet connection points"))


# ----------------------------------------------------------------------------------
# The ControlNet block (chapters 02, 03)
# ----------------------------------------------------------------------------------
def controlnet_block_diagram(title: str | None = None):
    """The paper's block (§3.1, its Figure 2): y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2),
    the frozen block F in blue, its trainable copy in orange, both zero convolutions dashed."""
    fig, ax = plt.subplots(figsize=(8.2, 3.5))
    y_top, y_bot = 1.6, 0.0
    # frozen path
    ax.text(-0.2, y_top, "x", ha="center", va="center", fontsize=11, fontweight="bold")
    _arrow(ax, (0.0, y_top), (1.3, y_top))
    _box(ax, 2.3, y_top, 2.0, 0.6, "F(·; Θ)\nfrozen block", "frozen", size=8.5)
    _arrow(ax, (3.3, y_top), (6.87, y_top))
    _plus(ax, 7.0, y_top)
    _arrow(ax, (7.13, y_top), (8.0, y_top))
    ax.text(8.25, y_top, "y_c", ha="center", va="center", fontsize=11, fontweight="bold")
    # condition path
    ax.text(-0.2, y_bot - 0.9, "c", ha="center", va="center", fontsize=11, fontweight="bold")
    _box(ax, 0.9, y_bot - 0.9, 1.3, 0.5, "Z(·; Θz1)", "zero", size=8.5)
    _arrow(ax, (0.0, y_bot - 0.9), (0.25, y_bot - 0.9))
    _line(ax, [(1.55, y_bot - 0.9), (1.9, y_bot - 0.9)])
    _arrow(ax, (1.9, y_bot - 0.9), (1.9, y_bot - 0.13))
    _line(ax, [(0.55, y_top), (0.55, y_bot), (1.77, y_bot)])   # x branches down to the copy
    _plus(ax, 1.9, y_bot)
    _arrow(ax, (2.03, y_bot), (2.6, y_bot))
    _box(ax, 3.6, y_bot, 2.0, 0.6, "F(·; Θc)\ntrainable copy", "trainable", size=8.5)
    _arrow(ax, (4.6, y_bot), (5.2, y_bot))
    _box(ax, 5.85, y_bot, 1.3, 0.5, "Z(·; Θz2)", "zero", size=8.5)
    _line(ax, [(6.5, y_bot), (7.0, y_bot)])
    _arrow(ax, (7.0, y_bot), (7.0, y_top - 0.13), color=RESIDUAL)
    ax.text(7.1, (y_top + y_bot) / 2, "residual\n(0 at step 0)", ha="left", va="center", fontsize=7.5, color=RESIDUAL)
    ax.text(1.95, y_bot + 0.25, "x + Z(c; Θz1)", ha="left", va="bottom", fontsize=7.5)
    ax.text(4.1, y_top + 0.75, "y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2)", ha="center", fontsize=10.5)
    _legend(ax, ["frozen", "trainable", "zero"], loc="lower center", bbox_to_anchor=(0.5, -0.08),
            labels={"frozen": "frozen: F(·; Θ)", "trainable": "trainable copy: Θc"})
    return _finish(fig, ax, (-0.6, 8.7), (-1.75, y_top + 1.05), title or "one ControlNet block (the paper's §3.1)")


# ----------------------------------------------------------------------------------
# The gradient front (chapter 02)
# ----------------------------------------------------------------------------------
#: The chain from the loss back to the condition, in the order a gradient travels it, with the
#: parameter group of :data:`cnetlib.probes.GROUPS` each link belongs to (None: no parameters).
CHAIN = (("loss", None), ("frozen base\nF(·; Θ)", None), ("connectors\nZ(·; Θz2)", "Z (zero convs, Θz2)"),
         ("copy\nF(·; Θc)", "Θc (trainable copy)"), ("last layer of E\nZ(·; Θz1)", "Z in E (Θz1)"),
         ("rest of E", "E (condition encoder)"))


def gradient_front_diagram(first_step: Mapping[str, int | None] | None = None, steps: int = 3,
                           title: str | None = None):
    """Which parts of a ControlNet have a non-zero gradient at optimiser steps 0, 1, 2...:
    the chain from the loss back to the condition encoder, one row per step, green where
    the gradient is non-zero. ``first_step`` maps each group of :data:`cnetlib.probes.GROUPS`
    to the first step with a gradient (:func:`cnetlib.probes.first_nonzero_step` of a
    measured run); the default is what the chain rule predicts (Z at 0, Θc and Z in E at 1,
    the rest of E at 2)."""
    predicted = {"Z (zero convs, Θz2)": 0, "Θc (trainable copy)": 1, "Z in E (Θz1)": 1, "E (condition encoder)": 2}
    first = dict(predicted if first_step is None else first_step)
    fig, ax = plt.subplots(figsize=(9.2, 1.0 + 0.85 * steps))
    bw, bh, dx = 1.3, 0.55, 1.6
    for s in range(steps):
        y = -s * 0.85
        ax.text(-0.9, y, f"step {s}", ha="right", va="center", fontsize=9, fontweight="bold")
        for k, (name, group) in enumerate(CHAIN):
            x = k * dx
            if group is None:
                kind = "frozen" if k == 1 else "neutral"
                _box(ax, x, y, bw, bh, name, kind, size=7)
            else:
                live = first.get(group) is not None and s >= first[group]
                ax.add_patch(FancyBboxPatch((x - bw / 2, y - bh / 2), bw, bh, boxstyle="round,pad=0.02,rounding_size=0.08",
                                            facecolor="#a1d99b" if live else "white", linewidth=1.3,
                                            edgecolor=GRADIENT if live else "#969696",
                                            linestyle="-" if live else (0, (3, 2))))
                ax.text(x, y, name, ha="center", va="center", fontsize=7, color="#252525" if live else "#969696")
            if k:
                _arrow(ax, (x - bw / 2, y), (x - dx + bw / 2, y), color=GRADIENT if k <= 2 else "#737373", lw=1.0)
    ax.text((len(CHAIN) - 1) * dx / 2, 0.62, "← the gradient travels from the loss towards the condition",
            ha="center", fontsize=8.5, color=GRADIENT)
    handles = [Patch(facecolor="#a1d99b", edgecolor=GRADIENT, label="non-zero gradient: these weights learn"),
               Patch(facecolor="white", edgecolor="#969696", linestyle=(0, (3, 2)), label="gradient exactly 0")]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.12 - 0.02 * steps), ncol=2, fontsize=7.5,
              frameon=False)
    return _finish(fig, ax, (-2.0, (len(CHAIN) - 1) * dx + bw / 2 + 0.2), (-(steps - 1) * 0.85 - 0.75, 0.95),
                   title or "the gradient front: one zero layer per step")


# ----------------------------------------------------------------------------------
# Where control enters classifier-free guidance (chapter 06)
# ----------------------------------------------------------------------------------
def cfg_control_diagram(modes: Sequence[str] = ("both", "cond_only", "resolution_weighted", "guess"),
                        title: str | None = None):
    """One panel per guidance mode: the two predictions of classifier-free guidance (ε_c with
    the prompt c_t, ε_uc with the empty prompt), which of them receives the ControlNet's
    residuals and with what weight, and how they are combined. The table is
    :func:`cnetlib.control.branch_weights`: a branch whose weights are None gets no control."""
    from .control import branch_weights

    text = {"both": "s · r_i", "cond_only": "s · r_i", "resolution_weighted": "s · w_i · r_i\nw_i ∝ 1 / h_i",
            "guess": "s · w_i · r_i\nw_i = logspace(−1, 0)"}
    text_uc = "s · r_i\n(ControlNet read\nwith \"\")"
    fig, axes = plt.subplots(1, len(modes), figsize=(3.1 * len(modes), 3.6))
    axes = [axes] if len(modes) == 1 else list(axes)
    for ax, mode in zip(axes, modes):
        w_uc, w_c = branch_weights(mode, [64, 32, 16, 8])
        _box(ax, 0.0, 1.5, 1.5, 0.55, "UNet\nprompt c_t", "frozen", size=7.5)
        _box(ax, 2.1, 1.5, 1.5, 0.55, "UNet\nempty prompt", "frozen", size=7.5)
        _box(ax, 1.05, 3.0, 1.6, 0.5, "ControlNet(c)", "trainable", size=7.5)
        for x, w in ((0.0, w_c), (2.1, w_uc)):
            if w is not None:
                _arrow(ax, (1.05, 2.75), (x, 1.78), color=RESIDUAL, lw=1.4)
                ax.text(x + (-0.15 if x == 0 else 0.15), 2.45, text[mode] if x == 0 else text_uc,
                        ha="right" if x == 0 else "left", va="center", fontsize=6.5, color=RESIDUAL)
            else:
                ax.text(x, 2.1, "no control", ha="center", fontsize=6.5, color="#969696")
        _arrow(ax, (0.0, 1.22), (0.0, 0.75))
        _arrow(ax, (2.1, 1.22), (2.1, 0.75))
        ax.text(0.0, 0.6, "ε_c", ha="center", fontsize=9)
        ax.text(2.1, 0.6, "ε_uc", ha="center", fontsize=9)
        ax.text(1.05, 0.05, "ε = ε_uc + β (ε_c − ε_uc)", ha="center", fontsize=8)
        _finish(fig, ax, (-1.2, 3.3), (-0.2, 3.45), f"mode `{mode}`")
    fig.suptitle(title or "where the control enters classifier-free guidance", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------
# Several ControlNets on one base (chapter 07)
# ----------------------------------------------------------------------------------
def multi_control_diagram(conditions: Sequence[str] = ("outline", "colour hint"), title: str | None = None):
    """K ControlNets, one per condition, each trained alone; at sampling time their residuals
    are added connection by connection, each times its scale s_k (the paper's §3.4 sums them
    with all s_k = 1; diffusers' ``controlnet_conditioning_scale`` is s_k)."""
    k = len(conditions)
    fig, ax = plt.subplots(figsize=(8.0, 1.6 + 1.0 * k))
    for j, name in enumerate(conditions):
        y = -j * 1.0
        ax.text(-0.2, y, f"c_{j + 1}: {name}", ha="right", va="center", fontsize=8.5)
        _box(ax, 1.1, y, 1.7, 0.55, f"ControlNet {j + 1}", "trainable", size=8)
        _arrow(ax, (-0.1, y), (0.25, y))
        _arrow(ax, (1.95, y), (3.6, -(k - 1) / 2), color=RESIDUAL)
        above = j < (k - 1) / 2 or k == 1
        ax.text(2.05, y + (0.1 if above else -0.1), f"s_{j + 1} · r_{j + 1},i", ha="left",
                va="bottom" if above else "top", fontsize=7.5, color=RESIDUAL)
    yc = -(k - 1) / 2
    _plus(ax, 3.75, yc, r=0.15)
    ax.text(3.75, 0.45, "Σ_k s_k · r_k,i\nfor every connection i", ha="center", va="bottom", fontsize=7.5,
            color=RESIDUAL)
    _arrow(ax, (3.9, yc), (4.9, yc), color=RESIDUAL)
    _box(ax, 5.9, yc, 2.0, 0.7, "frozen base\nF(·; Θ), prompt c_t", "frozen", size=8)
    _arrow(ax, (6.9, yc), (7.5, yc))
    ax.text(7.6, yc, "ε̂", ha="left", va="center", fontsize=10)
    _legend(ax, ["frozen", "trainable"], loc="lower center", bbox_to_anchor=(0.5, -0.1))
    return _finish(fig, ax, (-2.3, 8.1), (-(k - 1) - 0.9, 1.1),
                   title or "several conditions: one ControlNet each, residuals summed")


# ----------------------------------------------------------------------------------
# Loops and pipelines (chapters 04, 05, 09)
# ----------------------------------------------------------------------------------
def flow_diagram(stages: Sequence[tuple[str, str]], *, title: str | None = None, notes: Sequence[str] = (),
                 back: tuple[int, int, str] | None = None, per_row: int = 5):
    """A left-to-right chain of boxes: ``stages`` are (text, kind) with kind one of
    ``"frozen"``, ``"trainable"``, ``"zero"`` or ``"neutral"``, wrapped after ``per_row``
    boxes. ``back=(from, to, label)`` draws a green return arrow (a gradient, a loop) from
    stage ``from`` to stage ``to``; ``notes`` are lines printed under the chain."""
    if not stages:
        raise ValueError("stages: expected at least one (text, kind) pair, got none")
    for text, kind in stages:
        if kind not in KINDS:
            raise ValueError(f"stages: expected kinds among {sorted(KINDS)}, got {kind!r} for {text!r}")
    n = len(stages)
    rows = -(-n // per_row)
    bw, bh, dx, dy = 1.9, 0.8, 2.35, 1.55
    fig, ax = plt.subplots(figsize=(2.1 * min(n, per_row) + 0.4, 1.2 + 1.35 * rows + 0.22 * len(notes)))
    pos = []
    for k, (text, kind) in enumerate(stages):
        r, c = divmod(k, per_row)
        x, y = c * dx, -r * dy
        pos.append((x, y))
        _box(ax, x, y, bw, bh, text, kind, size=7.5)
        if k:
            px, py = pos[k - 1]
            if py == y:
                _arrow(ax, (px + bw / 2, y), (x - bw / 2, y))
            else:
                _line(ax, [(px, py - bh / 2), (px, (py + y) / 2)])
                _line(ax, [(px, (py + y) / 2), (x, (py + y) / 2)])
                _arrow(ax, (x, (py + y) / 2), (x, y + bh / 2))
    if back is not None:
        a, b, label = back
        (xa, ya), (xb, yb) = pos[a], pos[b]
        low = min(ya, yb) - bh / 2 - 0.35
        _line(ax, [(xa, ya - bh / 2), (xa, low), (xb, low)], color=GRADIENT, lw=1.4, ls="--")
        _arrow(ax, (xb, low), (xb, yb - bh / 2), color=GRADIENT, lw=1.4)
        ax.text((xa + xb) / 2, low - 0.08, label, ha="center", va="top", fontsize=7.5, color=GRADIENT)
    bottom = -(rows - 1) * dy - bh / 2 - 0.9
    for j, note in enumerate(notes):
        ax.text(-bw / 2, bottom - 0.3 * j, note, ha="left", va="top", fontsize=7.5)
    kinds = [k for k in ("frozen", "trainable", "zero") if any(kind == k for _, kind in stages)]
    if kinds:
        _legend(ax, kinds, loc="upper center", bbox_to_anchor=(0.5, 1.02))
    return _finish(fig, ax, (-bw / 2 - 0.2, (min(n, per_row) - 1) * dx + bw / 2 + 0.2),
                   (bottom - 0.3 * len(notes) - 0.2, bh / 2 + 0.55), title)
