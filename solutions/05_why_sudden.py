"""Chapter 05 · Why is convergence sudden? Worked solutions."""
import math
from math import comb


def cumulative_lr(step, steps, lr, schedule):
    """Exercise 05.1: Σ_{k<step} lr_k, with the cosine decaying to 10 % at the last step."""
    def rate(k):
        if schedule == "constant":
            return lr
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / max(1, steps - 1))))
    return sum(rate(k) for k in range(step))


def u_statistic(a, b):
    """Exercise 05.2: pairs with a_i earlier than b_j, ties ½, None later than every number."""
    def key(v):
        return math.inf if v is None else v
    u = 0.0
    for x in a:
        for y in b:
            u += 1.0 if key(x) < key(y) else 0.5 if key(x) == key(y) else 0.0
    return u


# Exercise 05.3: C(8, 3) = 56 equally likely splits, one of them puts all three first: p = 1/56.
SMALLEST_P = 1 / comb(8, 3)

SOLUTIONS = {"05.1": cumulative_lr, "05.2": u_statistic, "05.3": SMALLEST_P}
