"""Chapter 07 · Multi-condition: worked solutions."""
import numpy as np


def sum_residuals(residuals, scales):
    """Exercise 07.1: per connection, Σ_k s_k · r_k,i."""
    n = len(residuals[0])
    return [sum(s * r[i] for r, s in zip(residuals, scales)) for i in range(n)]


def colour_hint(targets, cells):
    """Exercise 07.2: block means over a cells × cells grid, repeated back to full size."""
    t = np.asarray(targets)
    h, w = t.shape[-3], t.shape[-2]
    blocks = t.reshape(*t.shape[:-3], cells, h // cells, cells, w // cells, 3).astype(np.float64).mean(axis=(-4, -2))
    up = np.repeat(np.repeat(blocks, h // cells, axis=-3), w // cells, axis=-2)
    return np.round(up).astype(np.uint8)


SOLUTIONS = {"07.1": sum_residuals, "07.2": colour_hint}
