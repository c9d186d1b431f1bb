"""DESIGN.md invariants 1-6 as hypothesis state machines over the core, against a brute-force model."""

import pytest
from hypothesis import settings

from extender.testing.ledger_machine import LedgerMachine

TestLedgerInvariants = LedgerMachine.TestCase
