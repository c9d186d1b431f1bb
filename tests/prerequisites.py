"""What a test does when something it needs (a built control plane, helm, a node's packages) is missing: under
``CI=true`` it fails with the reason; elsewhere it is skipped with the reason shown."""

from __future__ import annotations

import os

import pytest


def unavailable(message: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
