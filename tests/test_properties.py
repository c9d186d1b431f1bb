"""docs/design.md invariants 1-6 as hypothesis state machines over the core, against a brute-force model."""

from extender.testing.ledger_machine import LedgerMachine

TestLedgerInvariants = LedgerMachine.TestCase
