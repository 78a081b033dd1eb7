"""Chapter 03 · The trainable copy: worked solutions."""


def controlnet_block(F, F_copy, Z1, Z2, x, c):
    """Exercise 03.1: y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2), read from the inside out."""
    h = x + Z1(c)          # the condition, through its zero conv, added to the block's input
    h = F_copy(h)          # the trainable copy Θc
    return F(x) + Z2(h)    # the frozen block sees x alone; the copy's output joins through Z2


def receptive_field(layers):
    """Exercise 03.2: each layer widens the field by (kernel − 1) input pixels times the
    product of the strides before it."""
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


# Exercise 03.3: the input conv (1) + 2 ResNets on each of 3 levels (6) + a downsampler after
# each of the first 2 levels (2) = 9 skips, plus the middle block: 10. (SD's 4 levels give 13.)
CONNECTIONS_3x2 = 1 + 3 * 2 + 2 + 1

# Exercise 03.4 (open): why not copy the decoder too? The decoder already receives the control
# through the skips and the middle block, where the residuals are added; copying it would double
# the trainable parameters and the compute without giving the control a new way in. The paper
# copies the encoder because that is where the condition must be read (section 3.2).

SOLUTIONS = {"03.1": controlnet_block, "03.2": receptive_field, "03.3": CONNECTIONS_3x2}
