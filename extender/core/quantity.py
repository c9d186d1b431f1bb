"""Kubernetes resource quantities ("40", "1k", "2Ki", 3) as exact integers.

Extended resources are integral in Kubernetes, so a fractional value ("0.5", "500m") is rejected rather than
rounded. The core cannot import the kubernetes client (which has ``parse_quantity``), so this is the small,
exact subset that extended resources need.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number")
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a quantity (expected a string or an integer)")
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
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
    return int(amount)
