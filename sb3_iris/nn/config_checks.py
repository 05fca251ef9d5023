"""Type and range checks for the fields of the network config dataclasses (called from their ``__post_init__``).

Floats or strings where integers belong, zero widths or a one-word codebook would otherwise build degenerate
networks or fail deep inside torch. Each check raises ``ValueError`` naming the config, the field, the value
received and what is valid. Imports nothing from the rest of the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["check_bools", "check_int_tuples", "check_ints", "check_reals", "check_scales"]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _show(value: Any) -> str:
    return str(value) if isinstance(value, numbers.Number) and not isinstance(value, bool) else repr(value)


def _fail(config: Any, name: str, value: Any, valid: str) -> None:
    raise ValueError(f"{type(config).__name__}: {name}={_show(value)} must be {valid}")


def check_ints(config: Any, names: Iterable[str], minimum: int = 1) -> None:
    """Fields that must be integers ``>= minimum``.

    :param config: the dataclass instance
    :param names: the fields to check
    :param minimum: the smallest valid value
    """
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < minimum:
            _fail(config, name, value, f"an integer >= {minimum}")


def check_int_tuples(config: Any, names: Iterable[str], minimum: int = 1, allow_empty: bool = True) -> None:
    """Fields that must be sequences of integers ``>= minimum`` (layer widths, channel multipliers).

    :param config: the dataclass instance
    :param names: the fields to check
    :param minimum: the smallest valid entry
    :param allow_empty: whether an empty sequence is valid
    """
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, (tuple, list)) or not all(_is_int(v) and v >= minimum for v in value):
            _fail(config, name, value, f"a tuple of integers >= {minimum}")
        if not allow_empty and len(value) == 0:
            _fail(config, name, value, f"a non-empty tuple of integers >= {minimum}")


def check_reals(config: Any, names: Iterable[str], low: float = 0.0, high: float = math.inf, high_open=False) -> None:
    """Fields that must be finite real numbers in ``[low, high]`` (``[low, high)`` with ``high_open``).

    :param config: the dataclass instance
    :param names: the fields to check
    :param low: the lower bound, inclusive
    :param high: the upper bound
    :param high_open: exclude ``high`` itself (dropout probabilities: ``[0, 1)``)
    """
    if math.isinf(high):
        valid = f"a finite number >= {low:g}"
    else:
        valid = f"a number in [{low:g}, {high:g}{')' if high_open else ']'}"
    for name in names:
        value = getattr(config, name)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and low <= value and (value < high if high_open else value <= high)
        if not ok:
            _fail(config, name, value, valid)


def check_bools(config: Any, names: Iterable[str]) -> None:
    """Fields that must be ``True`` or ``False``.

    :param config: the dataclass instance
    :param names: the fields to check
    """
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            _fail(config, name, value, "True or False")


def check_scales(config: Any, names: Iterable[str]) -> None:
    """Fields that must be None or sequences of finite numbers ``> 0`` (per-feature scales).

    :param config: the dataclass instance
    :param names: the fields to check
    """
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
        )
        if not ok:
            _fail(config, name, value, "None or a list of finite numbers > 0 (one per feature)")
