"""Keep secret values out of everything opsflow writes: logs, exceptions and Prefect states,
artifacts, the ledger, notifications and CLI output.

``redact`` masks two kinds of text:

* **Known values.** Every secret opsflow resolves (``opsflow.secrets.resolve``), the DSN
  passwords it parses, the ledger key, and the credentials of the clients it builds (boto3's
  chain, a kubeconfig's token) are registered with ``register_secret``. Each is masked as
  written and in the forms text takes on its way out: percent-encoded (``quote``,
  ``quote_plus``, either hex case), ``repr``/JSON-escaped (once and twice) and base64
  (standard and URL-safe, at each of the three byte alignments, so the value is found inside a
  longer base64 blob such as a ``Basic`` header too). The credentials embedded in a registered
  value (a URL's password, a DSN's ``password=``, a webhook path's token) are registered too.
* **Credential-shaped text** opsflow never saw (an application's log lines, an HTTP error
  body, a library's error): one precompiled pattern for values after secret-named keys
  (``PGPASSWORD=…``, ``password='two words'``, ``"client_secret": "…"``, ``?access_token=…``),
  URL passwords (also containing ``/``), ``Authorization`` / ``Bearer`` / ``Basic``,
  ``Cookie`` / ``Set-Cookie``, signed query strings, Slack / Telegram / Discord / Teams
  webhook paths, PEM private keys and well-known token shapes (AWS key ids, GitHub, GitLab,
  Slack, Stripe, Google API keys, JWTs).

Values are masked, never the words around them: keys stay, and so do the ``secret:NAME`` /
``env:VAR`` references opsflow's messages and fix hints are written in, placeholders (``...``,
``<token>``, ``$VAR``) and prose after a colon (``token: holds a literal token (fix: …)``).

``install_log_redaction`` makes every log record of the process pass through ``redact`` when it
is created (a ``logging`` record factory: message, traceback and stack), whatever handler sends
it on (Prefect's API handler, the console, a file). ``redact_exception`` masks an exception in
place before Prefect turns it into a state message, an event and a result: every task
(``tasks.policy``) and runbook flow (``flows.common.runbook_flow``) raises through it.
``redact_data`` does the same for nested data (ledger details, artifact tables, manifests),
masking the values of secret-named keys as well. What it covers and does not:
docs/architecture.md, "Redaction".
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, quote_plus, unquote

from opsflow.errors import PermanentError, TransientError, is_transient

P = ParamSpec("P")
R = TypeVar("R")
MASK = "***"
_MIN_SECRET_LEN = 4
"""Shorter values are not registered: masking every ``abc`` would garble all output."""
_MIN_FORM_LEN = 8
"""A derived form (base64 fragment, encoding) shorter than this is not masked on its own."""

# --- credential-shaped text -------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """A credential shape: ``val`` is what is masked, the rest of the match is kept. The rule
    runs only on text containing one of its ``anchors`` (lower case): most log lines hold
    none, and a substring test costs far less than a regular expression scan."""

    name: str
    anchors: tuple[str, ...]
    pattern: re.Pattern[str]


_SECRET_KEY_ENDINGS = (
    "password", "passwd", "passphrase", "secret", "token", "credential", "credentials",
    "api_key", "apikey", "access_key", "private_key", "secret_key", "session_key",
    "signing_key", "encryption_key", "master_key", "account_key", "auth_key", "key_data",
    "cookie",
)  # fmt: skip
"""A key names a secret when it ends with one of these (``PGPASSWORD``, ``client_secret``,
``X-Api-Key``, ``aws_secret_access_key``), not when it merely contains one: the row count of
a table ``oauth_tokens`` or ``password_resets`` is no secret."""
_SHORT_KEYS = {"pw", "pwd", "pass", "pgpass"}
_VALUE = (
    r'"(?:[^"\\\n]|\\.)*"'  # "double quoted", escapes kept
    r"|'(?:[^'\\\n]|\\.)*'"  # 'single quoted'
    r'|\\"(?:[^"\\\n]|\\\\)*\\"'  # \"escaped quotes\" (JSON inside a JSON string)
    r"|\$\{\w+\}"  # ${VARIABLE}: a placeholder, kept
    r"|[^\s'\"&;,<>(){}\[\]|]+"  # bare: up to a space, quote or separator
)
_TOKEN_PREFIXES = (
    "akia", "asia", "agpa", "aida", "aroa", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "github_pat_", "glpat-", "xox", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "aiza", "eyj",
)  # fmt: skip


def _rule(name: str, anchors: tuple[str, ...], pattern: str) -> _Rule:
    return _Rule(name, anchors, re.compile(pattern))


_RULES = (
    # PEM private keys: the body, up to its END line (or the end of the text).
    _rule(
        "pem",
        ("private key",),
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?P<val>[\s\S]+?)"
        r"(?=-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    ),
    # scheme://user:password@host, the password may hold '/', '+', '='; a port is not one.
    _rule(
        "url_password",
        ("://",),
        r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"]*:(?!\d+(?:[/?#\s'\"]|$))"
        r"(?P<val>[^\s@'\"]+?)@",
    ),
    # scheme://TOKEN@host (a token as the user name: GitHub, GitLab, some webhooks).
    _rule("url_token", ("://",), r"\b[A-Za-z][A-Za-z0-9+.-]*://(?P<val>[A-Za-z0-9_~.%-]{20,})@"),
    _rule(
        "authorization",
        ("authoriz",),
        r"\b(?i:proxy-authorization|authorization)\\?[\"']?\s*[:=]\s*\\?[\"']?"
        r"(?:(?i:bearer|basic|token|digest|bot|apikey|sso-key|negotiate)\s+)?"
        r"(?P<val>[^\s\"'\\]+)",
    ),
    _rule(
        "bearer",
        ("bearer", "basic"),
        r"\b(?i:bearer|basic)\s+(?P<val>(?=[A-Za-z0-9._~+/=-]*[0-9A-Z])[A-Za-z0-9._~+/=-]{8,})",
    ),
    _rule(
        "cookie",
        ("cookie",),
        r"\b(?i:set-cookie|cookie)\\?[\"']?\s*:\s*\\?[\"']?(?P<val>[^\s=;\"'\\]+=[^\r\n\"'\\]*)",
    ),
    _rule(
        "signed_query",
        ("key=", "sig", "code=", "auth=", "x-amz-", "x-goog-"),
        r"[?&](?i:key|sig|signature|code|auth|x-amz-signature|x-amz-credential|"
        r"x-amz-security-token|x-goog-signature|x-goog-credential)=(?P<val>[^&#\s\"']+)",
    ),
    _rule(
        "slack",
        ("hooks.slack",),
        r"(?i:hooks\.slack\.com/(?:services|workflows|triggers)/)(?P<val>[\w/-]+)",
    ),
    _rule("telegram", ("telegram",), r"(?i:api\.telegram\.org/(?:file/)?bot)(?P<val>[^/\s\"'?#]+)"),
    _rule("discord", ("discord",), r"(?i:discord(?:app)?\.com/api/webhooks/)\d+/(?P<val>[\w-]+)"),
    _rule(
        "teams", ("webhook.office",), r"(?i:\.webhook\.office\.com/webhookb2/)(?P<val>[^\s\"'?#]+)"
    ),
    # key=value, key: value, "key": "value", key => value: masked when the key is secret-named
    # (the value is looked at, not consumed, so a pair inside another's value is seen too).
    _rule(
        "key_value",
        ("pass", "pw", "secret", "token", "cred", "key", "cookie"),
        rf"(?<![\w.-])(?P<key>[A-Za-z0-9_.-]+)(?P<sep>\\?[\"']?\s*(?:=>|[:=])\s*)(?=(?P<val>{_VALUE}))",
    ),
    _rule(
        "token_shape",
        _TOKEN_PREFIXES,
        r"\b(?P<val>(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"
        r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_-]{20,}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|AIza[0-9A-Za-z_-]{35}"
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    ),
)
_REFERENCE = re.compile(r"(?:env|secret):[\w./-]+")
_PLACEHOLDER = re.compile(r"\.\.\.|…|\*+|<[^<>]*>|\$\{?\w+\}?|%\(\w+\)s|\{\w*\}|")
_PROSE_NEXT = re.compile(r"\s+[a-z(]")
_AFTER_COLON = re.compile(r":\s+$")


def _quoted(value: str) -> tuple[str, str, str]:
    """(opening quote, inner text, closing quote) of a matched value."""
    for quote_text in ('\\"', '"', "'"):
        size = len(quote_text)
        if len(value) >= 2 * size and value.startswith(quote_text) and value.endswith(quote_text):
            return quote_text, value[size:-size], quote_text
    return "", value, ""


def _secret_key(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    return name.endswith(_SECRET_KEY_ENDINGS) or name in _SHORT_KEYS


def _is_value(rule: _Rule, m: re.Match[str], inner: str, quoted: bool) -> bool:
    """Is the matched ``val`` a credential to mask, rather than a key that is no secret's, a
    reference, a placeholder, the mask itself or the prose of a message?"""
    if inner == MASK or _REFERENCE.fullmatch(inner) or _PLACEHOLDER.fullmatch(inner):
        return False
    if rule.name == "key_value":
        key = m.group("key")
        if not _secret_key(key):
            return False
        if m.group("sep") == ":" and key.lower() in ("secret", "env"):
            return False  # secret:NAME is a reference, not a key and its value
    # "token: holds a literal token (fix: …)": a lower-case word after a colon, followed by
    # more words, is a message's prose.
    return not (
        not quoted
        and inner.isalpha()
        and inner.islower()
        and _AFTER_COLON.search(m.string, max(0, m.start("val") - 8), m.start("val"))
        and _PROSE_NEXT.match(m.string, m.end("val"))
    )


def _apply(rule: _Rule, text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in rule.pattern.finditer(text):
        start, end = m.span("val")
        if start < pos:
            continue  # inside a value masked already
        opening, inner, closing = _quoted(m.group("val"))
        if _is_value(rule, m, inner, bool(opening)):
            out += (text[pos:start], opening, MASK, closing)
            pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _mask_patterns(text: str) -> str:
    lower = text.lower()
    for rule in _RULES:
        for anchor in rule.anchors:  # a plain loop: ~3x cheaper than any() over a generator
            if anchor in lower:
                text = _apply(rule, text)
                break
    return text


def _credentials_in(text: str) -> set[str]:
    """The values ``_mask_patterns`` would mask in ``text``."""
    found: set[str] = set()
    for rule in _RULES:
        for m in rule.pattern.finditer(text):
            opening, inner, _ = _quoted(m.group("val"))
            if _is_value(rule, m, inner, bool(opening)):
                found.add(inner)
    return found


# --- known values -----------------------------------------------------------------------------

_lock = threading.Lock()
_values: set[str] = set()
_forms: set[str] = set()
_known: re.Pattern[str] | None = None
_URLSAFE = str.maketrans("+/", "-_")


def _base64_fragments(raw: bytes) -> set[str]:
    """The base64 characters that encode only ``raw``'s bits, at each of the 3 alignments it
    can have inside a longer encoded blob (standard and URL-safe alphabets)."""
    found: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        first = -(-8 * shift // 6)  # the first character with no bits of the padding before
        last = 8 * (shift + len(raw)) // 6  # past the last character with only raw's bits
        fragment = encoded[first:last]
        found.update((fragment, fragment.translate(_URLSAFE)))
    return found


def _forms_of(value: str) -> set[str]:
    """The value and the encodings it takes when text is re-encoded on its way out."""
    forms = {value}
    escaped = {
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    escaped |= {json.dumps(e)[1:-1] for e in set(escaped)} | {repr(e)[1:-1] for e in set(escaped)}
    encoded = {quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")}
    encoded |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), e) for e in encoded}
    forms |= {f for f in escaped | encoded if len(f) >= _MIN_FORM_LEN or f == value}
    forms |= {f for f in _base64_fragments(value.encode()) if len(f) >= _MIN_FORM_LEN}
    return forms


def register_secret(value: str) -> None:
    """Remember a secret value so that it is masked, in all its forms, wherever it shows up
    later; credentials inside it (a URL's password, a DSN's ``password=``) are registered too.
    The first registration also installs the log redaction (``install_log_redaction``)."""
    global _known
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    values = {value, unquote(value)}
    for inner in _credentials_in(value):
        if len(inner) >= _MIN_SECRET_LEN:
            values |= {inner, unquote(inner)}
    with _lock:
        new = values - _values
        if not new:
            return
        _values.update(new)
        for item in new:
            _forms.update(_forms_of(item))
        ordered = sorted(_forms, key=len, reverse=True)  # longest first: no partial masks
        _known = re.compile("|".join(map(re.escape, ordered)))
    install_log_redaction()


def redact(text: str) -> str:
    """Mask registered secrets (in all their forms) and credential-shaped text in ``text``."""
    if not text:
        return text
    known = _known
    if known is not None:
        text = known.sub(MASK, text)
    return _mask_patterns(text)


def _masks_value(key: Any, value: Any) -> bool:
    return (
        isinstance(key, str)
        and isinstance(value, str)
        and bool(value)
        and _secret_key(key)
        and _REFERENCE.fullmatch(value) is None
    )


def redact_data(data: Any) -> Any:
    """Redact every string inside nested dicts/lists/tuples (JSON going to the ledger, reports,
    manifests); the value of a secret-named key (``{"password": …}``, and ``{"name":
    "DB_PASSWORD", "value": …}`` as container env is written) is masked whole."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        pair = data.get("name") if set(data) >= {"name", "value"} else None
        return {
            redact_data(k): MASK
            if _masks_value(k, v) or (k == "value" and _masks_value(pair, v))
            else redact_data(v)
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return type(data)(redact_data(v) for v in data)
    return data


# --- exceptions -------------------------------------------------------------------------------


def redact_exception(exc: BaseException) -> BaseException:
    """Mask secrets in ``exc`` (and the exceptions it was raised from) before it leaves: in
    place, through its ``args``, where that cleans its text; otherwise a ``TransientError`` /
    ``PermanentError`` (as ``exc`` was classified) carrying the redacted text. Returns the
    exception to raise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        _clean_args(current)
        current = current.__cause__ or current.__context__
    text = _text(exc)
    clean = redact(text)
    if clean == text:
        return exc
    kind = TransientError if is_transient(exc) else PermanentError
    replacement = kind(f"{type(exc).__name__}: {clean}")
    replacement.__cause__ = None
    replacement.__suppress_context__ = True
    return replacement


def redacted_errors(
    fn: Callable[P, R], on_result: Callable[[R], R] | None = None
) -> Callable[P, R]:
    """``fn``, raising its exceptions through ``redact_exception`` (and passing what it returns
    through ``on_result``): what Prefect keeps of a failed task or flow run (its state message,
    the state-change events, a persisted result, the traceback it logs) is masked before
    Prefect sees the exception."""
    masked, after = redact_exception, on_result  # closure cells: the wrapper's globals are fn's

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            clean = masked(exc)
            if clean is exc:
                raise
            raise clean from None
        return after(result) if after is not None else result

    # Prefect resolves a task's or flow's string annotations (``from __future__ import
    # annotations``) in the globals of the function it is given: the wrapper carries fn's.
    wrapper = types.FunctionType(run.__code__, fn.__globals__, fn.__name__, None, run.__closure__)
    return functools.update_wrapper(wrapper, fn)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ shows as its type only
        return type(exc).__name__


def _clean_args(exc: BaseException) -> None:
    try:
        args = tuple(
            redact_data(a) if isinstance(a, str | dict | list | tuple) else a for a in exc.args
        )
        if args != exc.args:
            exc.args = args
        for attr in ("problem", "fix", "field"):  # InputError keeps its parts apart
            value = getattr(exc, attr, None)
            if isinstance(value, str) and redact(value) != value:
                setattr(exc, attr, redact(value))
    except (AttributeError, TypeError):  # exceptions with read-only args: replaced instead
        return


# --- logging ----------------------------------------------------------------------------------

_FORMATTER = logging.Formatter()
_installed: Callable[..., logging.LogRecord] | None = None


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in a log record's message, traceback and stack (in place)."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Pass every log record of this process through ``redact_record`` as it is created
    (idempotent; wraps whatever record factory was set before)."""
    global _installed
    with _lock:
        previous = logging.getLogRecordFactory()
        if previous is _installed:
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        _installed = factory
        logging.setLogRecordFactory(factory)
