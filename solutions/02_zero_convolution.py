"""Chapter 02 · Zero convolution: worked solutions."""
import torch


def zero_conv_grads(dL_dy, x):
    """Exercise 02.1. For a 1 × 1 conv, y[b, o, h, w] = Σ_i W[o, i] x[b, i, h, w] + b[o]: every
    pixel of every image is one use of the same W, so the gradients add up over them."""
    dW = torch.einsum("bohw,bihw->oi", dL_dy, x)   # Σ_{b,h,w} ∂L/∂y · xᵀ
    db = dL_dy.sum(dim=(0, 2, 3))                  # Σ_{b,h,w} ∂L/∂y
    dx = torch.zeros_like(x)                       # Wᵀ ∂L/∂y with W = 0
    return dW, db, dx


# Exercise 02.2: Adam's first update is lr · m̂ / (√v̂ + ε) with m̂ = g and v̂ = g² after bias
# correction, so every weight with a non-zero gradient moves by lr · sign(g): the RMS is lr.
# (Weight decay multiplies W by 1 − lr · 0.01 first, and W is 0, so it changes nothing.)
ADAM_FIRST_RMS = 1e-3   # lr

# Exercise 02.3: two zero layers sit between those layers and the loss, the connectors
# Z(·; Θz2) and E's last layer Z(·; Θz1). Step 0 moves the connectors, step 1 moves E's last
# layer (its input is not zero), and from step 2 the gradient passes it: answer 2.
FIRST_STEP_OF_E = 2

# Exercise 02.4 (open): with plain SGD (torch.optim.SGD) the front moves the same way, one
# zero layer per step, because it is a property of the gradients, not of the optimiser; what
# changes is how far each weight moves: by lr times its gradient, so the first connectors move by
# amounts proportional to their inputs' size instead of all by lr.

SOLUTIONS = {"02.1": zero_conv_grads, "02.2": ADAM_FIRST_RMS, "02.3": FIRST_STEP_OF_E}
