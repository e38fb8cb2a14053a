"""The default run's first losses on the CPU equal the recorded ones bit for bit (regenerate:
`python tests/record_default_run.py`, only for a deliberate change of the objective, init or default config)."""
import json

import pytest

from tests.record_default_run import RECORD, STEPS, default_run_losses


def test_default_run_first_losses_match_the_record_bit_for_bit():
    if not RECORD.is_file():
        pytest.fail(f"{RECORD} is missing: run python tests/record_default_run.py")
    recorded = json.loads(RECORD.read_text())
    assert recorded["steps"] == STEPS
    got = default_run_losses(STEPS)
    assert got == recorded["losses"], ([float.fromhex(x) for x in got], [float.fromhex(x) for x in recorded["losses"]])
