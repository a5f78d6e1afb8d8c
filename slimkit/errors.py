"""The one exception type that user-facing code raises for bad input, and the checks of numbers.

The CLI turns a SlimkitError into a single line on stderr and a non-zero exit, so its message must
say what is wrong and how to fix it. Commands run these checks on their options before loading
any model or data, so a typo costs an error line, not minutes of work.
"""

import math


class SlimkitError(ValueError):
    """Bad input or an unsupported situation, explained in one line."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a fraction to remove (of weights, channels, heads, neurons): it must lie in [0, 1)."""
    if not _is_number(sparsity) or not 0.0 <= float(sparsity) < 1.0:
        raise SlimkitError(f"{name} must be in [0, 1), got {sparsity!r}; e.g. 0.5 removes half of them")
    return float(sparsity)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Validate a count (epochs, samples, batch size, layers to remove...): an integer >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SlimkitError(f"{name} must be an integer >= {minimum}, got {value!r}; pass {name} {minimum} or more")
    return value


def check_positive(value: float, name: str) -> float:
    """Validate a finite number > 0 (a learning rate, a temperature, a time budget)."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise SlimkitError(f"{name} must be a finite number > 0, got {value!r}; pass a positive value")
    return float(value)


def check_nonnegative(value: float, name: str) -> float:
    """Validate a finite number >= 0 (a loss weight, a threshold, a budget where 0 means off)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise SlimkitError(f"{name} must be a finite number >= 0, got {value!r}; pass 0 or a positive value")
    return float(value)
