"""OPSFLOW_RETRY_DELAY_SCALE multiplies every retry delay; a value that is not in (0, 1] is
not applied (and the CLI's settings check refuses it with exit 2)."""

from __future__ import annotations

import pytest

from opsflow import errors
from opsflow.settings import Settings


@pytest.mark.parametrize(
    ("value", "scale"), [("0.1", 0.1), ("1", 1.0), ("0", 1.0), ("2", 1.0), ("fast", 1.0)]
)
def test_the_scale_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, scale: float
) -> None:
    monkeypatch.setenv("OPSFLOW_RETRY_DELAY_SCALE", value)
    assert errors.retry_delay_scale() == scale
    policy = errors._policy(2, [10, 60])
    assert policy["retry_delay_seconds"] == [10 * scale, 60 * scale]


def test_the_tests_run_with_a_tenth_of_the_delays() -> None:
    assert errors.TRANSFER_RETRIES["retry_delay_seconds"] == [1.0, 6.0]


@pytest.mark.parametrize("value", ["0", "1.5", "fast"])
def test_settings_refuse_a_scale_out_of_range(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OPSFLOW_RETRY_DELAY_SCALE", value)
    with pytest.raises(ValueError, match="retry_delay_scale"):
        Settings()
