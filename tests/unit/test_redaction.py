from __future__ import annotations

import logging

import pytest

from opsflow.errors import InputError
from opsflow.redaction import MASK, RedactingFilter, redact, redact_data, register_secret
from opsflow.secrets import resolve


def test_registered_secret_is_masked_everywhere() -> None:
    register_secret("s3cr3t-value-42")
    assert redact("connecting with s3cr3t-value-42 now") == f"connecting with {MASK} now"
    data = redact_data({"a": ["x s3cr3t-value-42"], "b": ("s3cr3t-value-42",), "n": 3})
    assert data == {"a": [f"x {MASK}"], "b": (MASK,), "n": 3}


def test_url_password_and_key_value_pairs_are_masked() -> None:
    text = "dsn postgresql://app:pa55word@db:5432/app token=abcd1234 password: hunter22"
    clean = redact(text)
    assert "pa55word" not in clean and "abcd1234" not in clean and "hunter22" not in clean
    assert "postgresql://app:***@db:5432/app" in clean


def test_env_reference_resolves_and_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_SECRET", "very-secret-env-value")
    assert resolve("env:OPSFLOW_TEST_SECRET", "f") == "very-secret-env-value"
    assert "very-secret-env-value" not in redact("oops very-secret-env-value leaked")


def test_missing_env_reference_names_field_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSFLOW_NOT_SET", raising=False)
    with pytest.raises(InputError) as info:
        resolve("env:OPSFLOW_NOT_SET", "environments.prod.databases[0].dsn")
    assert info.value.field == "environments.prod.databases[0].dsn"
    assert "export OPSFLOW_NOT_SET" in str(info.value)


def test_literal_value_passes_through() -> None:
    assert resolve("http://example.invalid", "f") == "http://example.invalid"


def test_logging_filter_rewrites_records() -> None:
    register_secret("log-secret-xyz")
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "value %s", ("log-secret-xyz",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"value {MASK}"
