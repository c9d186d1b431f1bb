"""Kubernetes resource quantities ("40", "1k", "2Ki", 3) as exact integers.

Extended resources are integral in Kubernetes, so a fractional value ("0.5", "500m") is rejected rather than
rounded. The core cannot import the kubernetes client (which has ``parse_quantity``), so this is the small,
exact subset that extended resources need.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .limits import MAX_INT64

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def parse_integer_quantity(value: object) -> int:
    """Return the exact integer a quantity denotes, or raise ``ValueError`` saying why it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return _within_int64(value, value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        if abs(value) > MAX_INT64:
            raise ValueError(f"{value!r} is beyond the largest quantity, {MAX_INT64} (int64)")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a quantity (expected a string or an integer)")
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
    if exponent is not None and abs(int(exponent)) > 40:  # 10**40 is beyond int64 with any suffix or fraction
        raise ValueError(f"{value!r} is beyond the largest quantity, {MAX_INT64} (int64)")
    try:
        amount = Decimal(number) * (Decimal(10) ** int(exponent or 0))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix == "m":
        amount = amount / 1000
    else:
        amount = amount * _SUFFIX[suffix or ""]
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number (extended resources are integers)")
    return _within_int64(int(amount), value)


def _within_int64(amount: int, value: object) -> int:
    if abs(amount) > MAX_INT64:
        raise ValueError(f"{value!r} is beyond the largest quantity, {MAX_INT64} (int64)")
    return amount


_DIGITS = re.compile(r"^[0-9]+$")


def whole_number(raw: object, *, maximum: int, what: str) -> int:
    """A label or annotation that holds a count ("2"): ASCII digits only (``str.isdigit`` also takes "²"), at
    least 1 and at most ``maximum``; ValueError naming the rule otherwise."""
    text = raw.strip() if isinstance(raw, str) else ""
    significant = text.lstrip("0")
    if not _DIGITS.match(text) or not significant:
        raise ValueError(f"must be a positive whole number like \"2\", got {raw!r}"[:200])
    if len(significant) > len(str(maximum)) or int(significant) > maximum:  # no int() of a million digits
        raise ValueError(f"must be at most {maximum} {what}, got {significant[:40]}")
    return int(significant)
