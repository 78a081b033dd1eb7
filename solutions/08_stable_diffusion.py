"""Chapter 08 · Stable Diffusion: worked solutions."""


def connection_sides(latent, levels, layers):
    """Exercise 08.1: the input conv and the ResNets at each level's side, a downsampler after
    every level but the last (at the next level's side), the middle block at the coarsest."""
    sides, h = [latent], latent            # the input conv
    for level in range(levels):
        sides += [h] * layers              # the level's ResNets
        if level < levels - 1:
            h //= 2
            sides.append(h)                # the downsampler's output
    return sides + [h]                     # the middle block


# Exercise 08.2: 512 × 512 × 3 numbers against (512 / 8)² × 4 = 64 × 64 × 4: 48 times fewer.
LATENT_RATIO = 512 * 512 * 3 / (64 * 64 * 4)

SOLUTIONS = {"08.1": connection_sides, "08.2": LATENT_RATIO}
