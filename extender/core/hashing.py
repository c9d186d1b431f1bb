"""A hash that is the same in every process (Python's ``hash()`` of a str is salted per process)."""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    """A 63-bit hash of ``text``, stable across processes and runs (the random policy's and the ledger's seed)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
