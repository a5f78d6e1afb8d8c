"""The one exception type that user-facing code raises for bad input.

The CLI turns a SlimkitError into a single line on stderr and a non-zero exit, so its message must
say what is wrong and how to fix it.
"""


class SlimkitError(ValueError):
    """Bad input or an unsupported situation, explained in one line."""


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a fraction of weights to remove: it must lie in [0, 1)."""
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise SlimkitError(f"{name} must be in [0, 1), got {sparsity!r}; e.g. 0.5 removes half the weights")
    return float(sparsity)
