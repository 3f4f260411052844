"""A Redis ACL user's password, changed over the admin target's connection. Redis keeps a set
of passwords per user, so the new one is added while the old stays valid
(``ACL SETUSER user #<sha256>``), and the old one is removed once every consumer uses the new
(``!<sha256>``). Only hashes travel in ACL commands, never a password. With an ``aclfile`` the
change is saved (``ACL SAVE``); without one it lives in memory (and in ``CONFIG REWRITE`` if
the operator runs it), which the step summary says."""

from __future__ import annotations

from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool, parse_url
from redis.retry import Retry

from connectors.redis import SOCKET_TIMEOUT_S, _classify, _where, redis_client
from opsflow.errors import PermanentError
from opsflow.inventory import RedisTarget
from opsflow.rotation import SecretValue, redis_password_hash
from opsflow.secrets import resolve
from tasks.policy import api_task, probe_task


def _admin(target: RedisTarget, field: str) -> tuple[str, redis.Redis]:
    url = resolve(target.url, field=f"{field}.url")
    return f"redis {target.name!r} ({_where(url)})", redis_client(url, field)


def _user(client: redis.Redis, user: str, where: str) -> dict[str, Any]:
    found = client.acl_getuser(user)
    if not found:
        raise PermanentError(
            f"{where}: ACL user {user!r} does not exist (fix: name an existing user in the "
            "secret's `role`; rotation never creates one)"
        )
    return dict(found)


def _save(client: redis.Redis) -> str:
    try:
        client.execute_command("ACL", "SAVE")
    except redis.ResponseError as exc:
        if "aclfile" in str(exc).lower() or "acl file" in str(exc).lower():
            return "in memory (the server has no aclfile: persist it in its configuration)"
        raise
    return "saved to the aclfile"


def _set(
    target: RedisTarget, field: str, user: str, value: SecretValue, how: Literal["#", "!"]
) -> str:
    where, client = _admin(target, field)
    digest = redis_password_hash(value)
    try:
        with client:
            known = set(_user(client, user, where).get("passwords") or [])
            if (how == "#") == (digest in known):
                state = "kept" if how == "#" else "absent"
                return f"{where}: ACL user {user}: the password was {state} already"
            client.execute_command("ACL", "SETUSER", user, how + digest)
            saved = _save(client)
    except redis.RedisError as exc:
        raise _classify(exc, where, field) from None
    done = "added" if how == "#" else "removed"
    return f"{where}: ACL user {user}: password {done}, {saved}"


@api_task("add_redis_password", timeout_seconds=60)
def add_redis_password(target: RedisTarget, field: str, user: str, value: SecretValue) -> str:
    """Add ``value`` to ACL user ``user``'s passwords (the others stay valid). Idempotent; a
    user that does not exist is a ``PermanentError`` (ACL SETUSER would create it)."""
    return _set(target, field, user, value, "#")


@api_task("remove_redis_password", timeout_seconds=60)
def remove_redis_password(target: RedisTarget, field: str, user: str, value: SecretValue) -> str:
    """Remove ``value`` from ACL user ``user``'s passwords (revoke the old one, or the new one
    in a rollback). Idempotent."""
    return _set(target, field, user, value, "!")


@probe_task("check_redis_login", timeout_seconds=30)
def check_redis_login(target: RedisTarget, field: str, user: str, value: SecretValue) -> str:
    """A new connection to the target's host (or socket) and db that authenticates as
    ``user`` with ``value`` and answers PING. Refused: ``PermanentError``."""
    url = resolve(target.url, field=f"{field}.url")
    where = f"redis {target.name!r} ({_where(url)}) as ACL user {user}"
    options = parse_url(url)
    options.update(username=user, password=value.reveal())
    pool = ConnectionPool(
        **options,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        with redis.Redis(connection_pool=pool) as client:
            client.ping()
    except redis.RedisError as exc:
        raise _classify(exc, where, field) from None
    finally:
        pool.disconnect()
    return f"{where}: authenticated"
