"""Chapter 06 · Guidance modes: worked solutions."""
import numpy as np


def resolution_weights(resolutions, max_weight):
    """Exercise 06.1: the paper's w_i = 64 / h_i, scaled so the coarsest connection gets max_weight."""
    h_min = min(resolutions)
    return [max_weight * h_min / h for h in resolutions]


def guess_weights(n):
    """Exercise 06.2: diffusers' logspace(-1, 0, n)."""
    return list(np.logspace(-1, 0, n))


# Exercise 06.3: in mode `both` with the empty prompt, ε_c and ε_uc receive the same inputs
# (the same x_t, t, empty prompt and residuals), so ε_c − ε_uc = 0 and ε = ε_uc whatever β:
# the change is 0 (up to float rounding, since β = 1 takes a one-branch shortcut).
BOTH_BETA_CHANGE = 0.0

SOLUTIONS = {"06.1": resolution_weights, "06.2": guess_weights, "06.3": BOTH_BETA_CHANGE}
