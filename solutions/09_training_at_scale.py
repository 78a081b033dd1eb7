"""Chapter 09 · Training at scale: worked solutions."""


def state_bytes(n_frozen, n_trainable, bytes_per_value):
    """Exercise 09.1: frozen weights once; trainable weights, their gradients and AdamW's two
    moments (m, v): four times."""
    return bytes_per_value * (n_frozen + 4 * n_trainable)


def shard(batch_size, rank, world):
    """Exercise 09.2: one global batch per step, process r takes the r-th block of it."""
    return batch_size * world, slice(rank * batch_size, (rank + 1) * batch_size)


SOLUTIONS = {"09.1": state_bytes, "09.2": shard}
