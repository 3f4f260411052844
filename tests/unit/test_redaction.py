"""opsflow.redaction: every credential form masked, opsflow's own words kept."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from typing import Literal
from urllib.parse import quote, quote_plus

import pytest
from rich.table import Table

from cli.console import RedactingConsole
from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.redaction import (
    MASK,
    install_log_redaction,
    redact,
    redact_data,
    redact_exception,
    redacted_errors,
    register_secret,
)
from opsflow.secrets import resolve

# (text, what must be gone, what must stay)
MASKED = [
    ("PGPASSWORD=hunter2 pg_dump -h db", "hunter2", "PGPASSWORD=*** pg_dump -h db"),
    ("export PGPASSWORD='two words'", "two words", "PGPASSWORD='***'"),
    ("password='two words' user=app", "two words", "password='***' user=app"),
    ('password="two \\" words"', "words", 'password="***"'),
    ('{"password": "p@ss w0rd", "user": "app"}', "p@ss", '{"password": "***", "user": "app"}'),
    ('{"db": {"Password" : "Hunter2"}}', "Hunter2", '"Password" : "***"'),
    ('log {\\"password\\": \\"esc4ped\\"} end', "esc4ped", '\\"password\\": \\"***\\"'),
    ("dsn host=db port=5432 password=s3cret user=app", "s3cret", "password=*** user=app"),
    ("postgresql://app:pa55word@db:5432/app", "pa55word", "postgresql://app:***@db:5432/app"),
    ("postgresql://app:pa/ss+w=rd@db/app", "pa/ss", "postgresql://app:***@db/app"),
    ("redis://:r3dis-pw@cache:6379/0", "r3dis-pw", "redis://:***@cache:6379/0"),
    (
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@bucket/prod",
        "wJalrXUtnFEMI",
        "@bucket/prod",
    ),
    ("https://ghp_0123456789abcdefghijABCDEFGHIJ0123456789@github.com/x", "ghp_0123", "github"),
    ("Authorization: Bearer abcDEF123456789xyz", "abcDEF123456789xyz", "Authorization: Bearer ***"),
    ("authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpw", "authorization=Basic ***"),
    ("curl -H 'Authorization: token T0ken-Value-1' x", "T0ken-Value-1", "token ***' x"),
    ("sent Bearer eyJhbGciOiJIUzI1NiJ9 to it", "eyJhbGciOiJIUzI1NiJ9", "Bearer ***"),
    ("Proxy-Authorization: Basic QWxhZGRpbjpvcGVu", "QWxhZGRpbjpvcGVu", "Basic ***"),
    ("client_secret=abc123def&grant_type=client_credentials", "abc123def", "client_secret=***&"),
    ("https://api.example.com/v1?access_token=tok123456&x=1", "tok123456", "access_token=***&x=1"),
    ("refresh_token: r3fr3sh-t0ken", "r3fr3sh", "refresh_token: ***"),
    ('{"refresh_token": "rt-998877"}', "rt-998877", '"refresh_token": "***"'),
    ("id_token=eyJraWQ1.eyJzdWIi.c2lnbmF0", "eyJraWQ1", "id_token=***"),
    (
        '"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADAN\\n-----END PRIVATE KEY-----"',
        "MIIEvQ",
        '"private_key": "***"',
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "MIIEpA",
        "-----END RSA PRIVATE KEY-----",
    ),
    ("private_key=MIIEvgIBADANBgkq", "MIIEvg", "private_key=***"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "aws_secret_access_key=***"),
    ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "AWS_SECRET_ACCESS_KEY: ***"),
    ("aws_session_token = FwoGZXIvYXdzEJr", "FwoGZXIvYXdzEJr", "aws_session_token = ***"),
    ("key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE", "key id *** used"),
    ("Cookie: session=abc123; theme=dark", "abc123", "Cookie: ***"),
    ("Set-Cookie: sid=s3cr3t; Path=/; HttpOnly", "s3cr3t", "Set-Cookie: ***"),
    ('"cookie": "sid=c00kie"', "c00kie", '"cookie": "***"'),
    ("https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX", "XXXXsecret", "services/***"),
    ("https://api.telegram.org/bot123456:ABC-DEF1234gh/sendMessage", "ABC-DEF", "bot***/send"),
    ("https://discord.com/api/webhooks/1234/aBcD-eFgH_1234", "aBcD-eFgH", "webhooks/1234/***"),
    ("https://x.webhook.office.com/webhookb2/abc-123@def/IncomingWebhook/9", "abc-123", "b2/***"),
    ("GET /v1?key=AIzaSyA1234567890abcdefghijk&q=1", "AIzaSyA", "?key=***&q=1"),
    ("s3 url ?X-Amz-Signature=abcdef0123&X-Amz-Credential=AK/2024", "abcdef0123", "Signature=***"),
    ("api_key: 9f8e7d6c5b4a", "9f8e7d6c5b4a", "api_key: ***"),
    ("X-Api-Key: 9f8e7d6c5b4a", "9f8e7d6c5b4a", "X-Api-Key: ***"),
    ("apikey=AIzaSyA1234567890abcdefghijklmnopqrstu", "AIzaSy", "apikey=***"),
    ("DB_PASSWORD=Tr0ub4dor&3", "Tr0ub4dor", "DB_PASSWORD=***"),
    ("password: hunter22", "hunter22", "password: ***"),
    ("password: changeme", "changeme", "password: ***"),
    ("pwd=abc12 next", "abc12", "pwd=*** next"),
    ("token=abcd1234 and secret => 's3'", "abcd1234", "secret => '***'"),
    ("kubeconfig token: eyJhbGciOiJSUzI1NiIsImtpZCI6", "eyJhbGci", "token: ***"),
    ("client-key-data: LS0tLS1CRUdJTiBSU0E=", "LS0tLS1C", "client-key-data: ***"),
    ("github ghp_0123456789abcdefghijABCDEFGHIJ0123456789 used", "ghp_0123", "github *** used"),
    ("slack xoxb-1234567890-abcdefghij", "xoxb-1234", "slack ***"),
    ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4", "SflKxw", "jwt ***"),
    ("a: password=xyz123", "xyz123", "a: password=***"),
    ("url=postgresql://u:pw12x@h/db", "pw12x", "url=postgresql://u:***@h/db"),
]

# opsflow's own words: fix hints, references, prose, ordinary log lines — unchanged.
KEPT = [
    "fix: write it as a reference, env:VAR_NAME or secret:prefect-block-name",
    "environments.prod.kubernetes.token: holds a literal token (fix: store it in a secret and "
    "write env:VAR or secret:NAME here)",
    "environments.prod.notify[0].webhook: holds a literal token (fix: write env:VAR or "
    "secret:NAME here)",
    "headers.Authorization: holds a literal credential (fix: write env:VAR here)",
    "export OPSFLOW_DB_PASSWORD=... in the environment of the process running the flow",
    "create it with Secret(value='...').save('prod-db') or password: \"<password>\"",
    "password=env:DB_PASSWORD token: secret:api-token encryption_key: env:BACKUP_KEY",
    "OPSFLOW_LEDGER_KEY=env:VAR|secret:NAME",
    "PGPASSWORD=$PGPASSWORD pg_dump and password=${DB_PW}",
    "http://127.0.0.1:8080/health answered HTTP 200 in 3 ms",
    "postgresql://app@db:5432/app (the password in env:APP_DB_PASSWORD)",
    "backup key e2e/appdb/2024/01/20240101T000000Z.sql.zst sha256 0123456789abcdef",
    '"signature": "9c1f0aa8d2", "key_id": "k1", "row_hash": "ab12"',
    "basic authentication failed; a bearer token is required",
    "password: must be a reference",
    "the token was rejected (fix: rotate it)",
    "check_endpoint prefect-api: complete prefect-api: HTTP 200 in 3 ms",
    "already masked: password=*** postgresql://app:***@db/app",
    "rows: public.oauth_tokens: 5, password_resets=12, token_type=bearer",
    "DB_PASSWORD_FILE=/run/secrets/db secret_name=prod-db",
]


@pytest.mark.parametrize(("text", "gone", "kept"), MASKED, ids=[m[0][:40] for m in MASKED])
def test_credential_forms_are_masked(text: str, gone: str, kept: str) -> None:
    clean = redact(text)
    assert gone not in clean
    assert kept in clean
    assert MASK in clean


@pytest.mark.parametrize("text", KEPT, ids=[k[:40] for k in KEPT])
def test_opsflow_words_come_through_unchanged(text: str) -> None:
    assert redact(text) == text


SECRET = "S3cr3t/Va lue+4'2=\\é"


def _registered_forms() -> list[tuple[str, str, int]]:
    """(form, text, how many characters of it may survive: its wrapper, padding, and the
    base64 characters that also carry bits of a neighbour)."""
    raw = SECRET.encode()
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(SECRET, safe=""))
    nested = json.dumps(json.dumps({"k": SECRET}))
    forms = [
        ("as is", SECRET, 0),
        ("quote", quote(SECRET), 0),
        ("quote safe=''", quote(SECRET, safe=""), 0),
        ("quote lower-case hex", lower_hex, 0),
        ("quote_plus", quote_plus(SECRET), 0),
        ("repr", repr(SECRET), 2),
        ("json", json.dumps(SECRET), 2),
        ("json ensure_ascii=False", json.dumps(SECRET, ensure_ascii=False), 2),
        ("json in json", nested, len(nested) - len(json.dumps(json.dumps(SECRET)[1:-1])[1:-1])),
        ("base64", base64.b64encode(raw).decode(), 4),
        ("base64 urlsafe", base64.urlsafe_b64encode(raw).decode(), 4),
    ]
    for prefix in (b"u:", b"us:", b"use:"):  # the three alignments inside a longer blob
        own = -(-len(prefix) * 8 // 6) + 4  # the prefix's characters, the last partial + "=="
        forms.append((f"base64 {prefix!r}+", base64.b64encode(prefix + raw).decode(), own))
        forms.append((f"urlsafe {prefix!r}+", base64.urlsafe_b64encode(prefix + raw).decode(), own))
    return forms


@pytest.mark.parametrize(
    ("form", "text", "survives"), _registered_forms(), ids=lambda v: str(v)[:24]
)
def test_registered_secret_is_masked_in_every_form(form: str, text: str, survives: int) -> None:
    register_secret(SECRET)
    clean = redact(f"before {text} after")
    assert clean.startswith("before ") and clean.endswith(" after"), form
    assert MASK in clean, form
    left = clean.removeprefix("before ").removesuffix(" after").replace(MASK, "", 1)
    assert len(left) <= survives, (form, clean)


def test_registered_secret_is_masked_everywhere() -> None:
    register_secret("s3cr3t-value-42")
    assert redact("connecting with s3cr3t-value-42 now") == f"connecting with {MASK} now"
    data = redact_data({"a": ["x s3cr3t-value-42"], "b": ("s3cr3t-value-42",), "n": 3})
    assert data == {"a": [f"x {MASK}"], "b": (MASK,), "n": 3}


def test_credentials_inside_a_registered_value_are_registered_too() -> None:
    register_secret("host=db user=app password=kv-Pass-77 dbname=app")
    register_secret("postgresql://app:url-Pass-88@db/app")
    register_secret("https://hooks.slack.com/services/T1/B2/slackTokenValue99")
    assert redact("pw kv-Pass-77, pw url-Pass-88, T1/B2/slackTokenValue99") == (
        f"pw {MASK}, pw {MASK}, {MASK}"
    )


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abcd") == "abc abcd"


def test_redact_data_masks_secret_named_keys_and_env_pairs() -> None:
    data = {
        "password": "plainword",
        "Token": "plain",
        "encryption_key": "env:BACKUP_KEY",
        "env": [{"name": "DB_PASSWORD", "value": "plain2"}, {"name": "MODE", "value": "prod"}],
        "containers": ["DB_PASSWORD=plain3", "MODE=prod"],
        "count": 3,
        "table_checksums": {"public.oauth_tokens": "9e107d9d372bb6826bd81d3542a419d6"},
    }
    assert redact_data(data) == {
        "password": MASK,
        "Token": MASK,
        "encryption_key": "env:BACKUP_KEY",
        "env": [{"name": "DB_PASSWORD", "value": MASK}, {"name": "MODE", "value": "prod"}],
        "containers": [f"DB_PASSWORD={MASK}", "MODE=prod"],
        "count": 3,
        "table_checksums": {"public.oauth_tokens": "9e107d9d372bb6826bd81d3542a419d6"},
    }


def test_env_reference_resolves_and_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_SECRET", "very-secret-env-value")
    assert resolve("env:OPSFLOW_TEST_SECRET", "f") == "very-secret-env-value"
    assert "very-secret-env-value" not in redact("oops very-secret-env-value leaked")


def test_missing_env_reference_names_field_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSFLOW_NOT_SET", raising=False)
    with pytest.raises(InputError) as info:
        resolve("env:OPSFLOW_NOT_SET", "environments.prod.databases[0].dsn")
    assert info.value.field == "environments.prod.databases[0].dsn"
    assert "export OPSFLOW_NOT_SET=..." in redact(str(info.value))


def test_literal_value_passes_through() -> None:
    assert resolve("http://example.invalid", "f") == "http://example.invalid"


# --- exceptions -------------------------------------------------------------------------------


def test_opsflow_errors_are_masked_in_place() -> None:
    register_secret("exc-secret-1234")
    cause = ValueError("from exc-secret-1234")
    exc = TransientError("cannot connect with password=pw-in-text-9 exc-secret-1234")
    exc.__cause__ = cause
    assert redact_exception(exc) is exc
    assert str(exc) == f"cannot connect with password={MASK} {MASK}"
    assert str(cause) == f"from {MASK}"


def test_input_error_keeps_its_parts_masked() -> None:
    exc = InputError("headers.X", "holds token=tok-55667788", "write env:VAR here")
    assert redact_exception(exc) is exc
    assert exc.problem == f"holds token={MASK}" and exc.fix == "write env:VAR here"
    assert "tok-55667788" not in str(exc) and exc.field == "headers.X"


class _Stubborn(Exception):
    """An exception whose text does not come from its args (as botocore's and OSError's)."""

    status = 503

    def __str__(self) -> str:
        return "upstream said Authorization: Bearer Stubborn123456"


def test_foreign_exception_with_its_own_str_is_replaced_keeping_its_kind() -> None:
    clean = redact_exception(_Stubborn())
    assert isinstance(clean, TransientError)  # 503: still retried
    assert str(clean) == f"_Stubborn: upstream said Authorization: Bearer {MASK}"
    assert clean.__suppress_context__


def test_redacted_errors_masks_what_a_task_raises_and_keeps_the_signature() -> None:
    def probe(kind: Literal["a", "b"], token: str) -> str:
        raise PermanentError(f"{kind}: bad token={token}")

    guarded = redacted_errors(probe)
    with pytest.raises(PermanentError) as info:
        guarded("a", "tok-11223344")
    assert str(info.value) == f"a: bad token={MASK}"
    # Prefect resolves string annotations in the wrapper's globals: they are the function's.
    assert guarded.__globals__ is probe.__globals__
    assert guarded.__wrapped__ is probe  # type: ignore[attr-defined]


def test_redacted_errors_passes_results_through_on_result() -> None:
    guarded = redacted_errors(lambda: "password=p4ss-value", on_result=redact)
    assert guarded() == f"password={MASK}"


# --- logging and the CLI consoles -------------------------------------------------------------


def test_every_log_record_is_redacted_at_creation() -> None:
    install_log_redaction()
    register_secret("log-secret-xyz")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("opsflow.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("value %s and %s", "log-secret-xyz", "Authorization: Bearer Abc12345678")
        try:
            raise RuntimeError("boom with log-secret-xyz")
        except RuntimeError:
            logger.exception("failed, stack follows", stack_info=True)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert f"value {MASK} and Authorization: Bearer {MASK}" in written
    assert "RuntimeError: boom with ***" in written  # the traceback is there, masked
    assert "Stack (most recent call last)" in written
    assert "log-secret-xyz" not in written and "Abc12345678" not in written


def test_console_redacts_markup_tables_and_json_before_wrapping() -> None:
    register_secret("console-secret-abcdefghij")
    buffer = io.StringIO()
    console = RedactingConsole(file=buffer, width=20, highlight=False)
    table = Table(title="t console-secret-abcdefghij")
    table.add_column("summary")
    table.add_row("a password=console-pw-12345678 in a long cell that wraps")
    console.print("[bold]console-secret-abcdefghij[/]", table)
    console.print_json(data={"password": "json-pw-1", "x": "console-secret-abcdefghij"})
    console.print_json('{"token": "json-tok-2"}')
    written = buffer.getvalue()
    for secret in ("console-secret", "abcdefghij", "console-pw", "12345678", "json-pw", "json-tok"):
        assert secret not in written
    assert "password=***" in written and MASK in written
