"""Secret rotation, the pure parts: the value that never shows, generating one, the forms a
value takes on its way to a system (a SCRAM verifier, a Redis ACL hash, an API key and its
id in a store), which secrets a run rotates and the plan of it, and the report.

**Values.** A secret value lives in a ``SecretValue``: registered for redaction when it is
made, shown as ``***`` by ``repr`` and ``str``, refused by ``pickle`` and JSON (so a result
store or a task's parameters cannot carry it by accident: Prefect never sees the value, only
the object, which it neither persists nor sends). Tasks take and return ``SecretValue``
objects; ``reveal()`` is called only where the value goes to its system.

**The store format.** A ``postgres_role`` or ``redis_acl`` store holds the password itself.
An ``api_key`` store must also know the key's id, because revoking a key is done by id:

* a Prefect Secret block holds ``<id>:<key>`` (``pack_api_key``; the id has no ``:``);
* a Kubernetes Secret holds the key itself in ``data[key]`` (what the pods read) and the id in
  the Secret's annotation ``opsflow.io/key-id`` (an id is no secret).

A first rotation of a key opsflow did not create needs that id written once by hand (the
runbook's page says how); without it the run stops before it changes anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from datetime import datetime
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, Field

from opsflow.errors import InputError
from opsflow.inventory import DirectAccess, Environment, RotatedSecret
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import register_secret

RUNBOOK = "rotate-secret"
ROTATED_STEP = "rotated"
"""The ledger step the security review's secrets-age check reads: runbook ``rotate-secret``,
step ``rotated``, target the secret's name, status complete."""
ROLLBACK_STEP = "rollback"
ROLLED_BACK = "rolled-back"
"""The run status of a rotation that failed and was rolled back completely."""
DUE = "due"
"""``secret_name=due``: every secret of the environment whose ``rotate_every`` has passed since its
last ``rotated`` step (one never rotated by opsflow is due)."""
KEY_ID_ANNOTATION = "opsflow.io/key-id"
ROTATED_AT_ANNOTATION = "opsflow.io/rotated-at"
ALPHABET = string.ascii_letters + string.digits
"""Generated values use letters and digits only: safe in a DSN, an env file, a shell and a
URL without quoting; 32 of them are about 190 bits."""
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


class SecretValue:
    """A secret value that does not show: ``repr``/``str`` give ``SecretValue(***)``; it
    cannot be pickled or copied into JSON. Registered for redaction when it is made."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret value is a non-empty string")
        register_secret(value)
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one call that hands it to its system."""
        return self._value

    def same_as(self, other: SecretValue) -> bool:
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __repr__(self) -> str:
        return "SecretValue(***)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretValue is not serialisable (it must stay in memory)")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self


def generate_value(length: int) -> SecretValue:
    """A new value of ``length`` characters from ``ALPHABET`` (``secrets.choice``)."""
    return SecretValue("".join(secrets.choice(ALPHABET) for _ in range(length)))


def scram_sha256_verifier(
    password: SecretValue, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> SecretValue:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677, the form psql's
    ``\\password`` sends): ``ALTER ROLE … PASSWORD '<verifier>'`` never puts the password
    itself in a statement a server log could keep. (No SASLprep: generated values are ASCII
    letters and digits; a stored value with other characters is sent as it is, as libpq
    does for a string that SASLprep would not change.)"""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.reveal().encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return SecretValue(
        f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
    )


def redis_password_hash(password: SecretValue) -> str:
    """The SHA-256 (hex) Redis ACLs keep of a password (``ACL SETUSER u #<hash>`` adds it,
    ``!<hash>`` removes it): the password itself is never sent in an ACL command."""
    return hashlib.sha256(password.reveal().encode()).hexdigest()


def pack_api_key(key_id: str, key: SecretValue) -> SecretValue:
    """The Prefect Secret block form of an API key: ``<id>:<key>``."""
    if not key_id or ":" in key_id:
        raise ValueError("an API key id is non-empty and has no ':'")
    return SecretValue(f"{key_id}:{key.reveal()}")


def unpack_api_key(stored: SecretValue) -> tuple[str | None, SecretValue]:
    """(id, key) of a Prefect Secret block's ``<id>:<key>``; (None, the value) when it holds
    no id."""
    key_id, sep, key = stored.reveal().partition(":")
    if not sep or not key_id or not key:
        return None, stored
    return key_id, SecretValue(key)


# --- which secrets a run rotates --------------------------------------------------------------


def _field(env_name: str, index: int, rest: str = "") -> str:
    return f"environments.{env_name}.secrets[{index}]{rest}"


def check_rotatable(env_name: str, env: Environment, index: int, secret: RotatedSecret) -> None:
    """What the inventory model cannot see alone: the secret has consumers, its store and
    consumers are things the environment has, the admin connection suits rotation."""
    if secret.consumers.empty:
        raise InputError(
            _field(env_name, index, ".consumers"),
            f"secret {secret.name} has no consumers: nothing would use the new value",
            "list the Docker services (consumers: {docker: [{service: api, env: DB_PASSWORD}]}) "
            "or Kubernetes deployments (consumers: {kubernetes: [api]}) that read it",
        )
    services = [s.name for s in env.docker.services] if env.docker else []
    for consumer in secret.consumers.docker:
        if consumer.service not in services:
            raise InputError(
                _field(env_name, index, ".consumers.docker"),
                f"service {consumer.service!r} is not in docker.services",
                f"name one of {sorted(services)} or add it to docker.services",
            )
    if (secret.consumers.kubernetes or secret.store.kubernetes_secret) and env.kubernetes is None:
        raise InputError(
            _field(env_name, index),
            f"secret {secret.name} uses a Kubernetes Secret or deployments, and the environment "
            "has no `kubernetes`",
            "add kubernetes: {namespace: ...} to the environment",
        )
    if secret.consumers.kubernetes and secret.store.kubernetes_secret is None:
        raise InputError(
            _field(env_name, index, ".store"),
            "Kubernetes deployments read the value from a Kubernetes Secret, and the store is "
            f"{secret.store.describe()}",
            "store it in {kubernetes_secret: NAME, key: KEY} that the deployments mount",
        )
    if secret.kind == "postgres_role":
        db = next((d for d in env.databases if d.name == secret.admin), None)
        if db is None or db.kind != "postgres":
            raise InputError(
                _field(env_name, index, ".admin"),
                f"{secret.admin!r} is not a PostgreSQL database of the environment",
                "name one of its databases",
            )
        if not isinstance(db.via, DirectAccess):
            raise InputError(
                _field(env_name, index, ".admin"),
                f"database {db.name} is reached through a container or pod: rotation changes "
                "the role and logs in as it over the DSN's host and port",
                "point admin at a database entry reached directly (via: direct) on the same server",
            )
    if secret.kind == "redis_acl" and secret.admin not in [r.name for r in env.redis]:
        raise InputError(
            _field(env_name, index, ".admin"),
            f"{secret.admin!r} is not a Redis target of the environment",
            "name one of its redis targets",
        )


def last_rotations(rows: list[Any]) -> dict[str, datetime]:
    """The newest complete ``rotated`` step per secret name, from ledger step rows (any
    order; each with ``target``, ``status`` and ``recorded_at``)."""
    newest: dict[str, datetime] = {}
    for row in rows:
        if row.status != "complete":
            continue
        seen = newest.get(row.target)
        if seen is None or row.recorded_at > seen:
            newest[row.target] = row.recorded_at
    return newest


def is_due(secret: RotatedSecret, last: datetime | None, now: datetime) -> bool:
    return last is None or now - last >= secret.rotate_every


def choose(
    env_name: str,
    env: Environment,
    secret: str,
    last: dict[str, datetime],
    now: datetime,
) -> list[tuple[int, RotatedSecret]]:
    """The secrets a run rotates, each checked (``check_rotatable``): the one named, or every
    due one for ``due``. An unknown name is an ``InputError`` listing the known ones."""
    known = [s.name for s in env.secrets]
    if secret == DUE:
        chosen = [(i, s) for i, s in enumerate(env.secrets) if is_due(s, last.get(s.name), now)]
    else:
        chosen = [(i, s) for i, s in enumerate(env.secrets) if s.name == secret]
        if not chosen:
            raise InputError(
                "secret_name",
                f"environment {env_name} has no secret {secret!r}",
                f"choose one of {known}, or due"
                if known
                else "add it under `secrets:` in the "
                "environment's inventory (docs/runbooks/rotate-secret.md)",
            )
    for index, s in chosen:
        check_rotatable(env_name, env, index, s)
    return chosen


# --- the plan ---------------------------------------------------------------------------------

_CREATE = {
    "postgres_role": "ALTER ROLE {role} PASSWORD <SCRAM verifier of a new value> over "
    "{admin}: existing connections keep working, new logins need the new value",
    "redis_acl": "ACL SETUSER {role} #<hash of a new value> over {admin}: the old password "
    "stays valid until it is revoked",
    "api_key": "POST {create}: a new key; the old one stays valid until it is revoked",
}
_REVOKE = {
    "postgres_role": "nothing more: ALTER ROLE replaced the old password already",
    "redis_acl": "ACL SETUSER {role} !<hash of the old value>",
    "api_key": "{method} {revoke} with the old key's id",
}


def _where(secret: RotatedSecret) -> dict[str, str]:
    api = secret.api
    return {
        "role": str(secret.role),
        "admin": str(secret.admin),
        "create": api.create if api else "",
        "revoke": api.revoke if api else "",
        "method": api.revoke_method if api else "",
    }


def consumer_targets(env: Environment, secret: RotatedSecret) -> list[str]:
    """Every consumer as the steps name it: ``docker <service>``, ``deployment <ns>/<name>``."""
    ns = env.kubernetes.namespace if env.kubernetes else "-"
    return [f"docker {c.service}" for c in secret.consumers.docker] + [
        f"deployment {ns}/{d}" for d in secret.consumers.kubernetes
    ]


def secret_steps(env: Environment, secret: RotatedSecret) -> list[PlanStep]:
    """The plan steps of one secret, in the order the run takes them."""
    name, store, where = secret.name, secret.store.describe(), _where(secret)
    steps = [
        PlanStep(
            action="read_secret_store",
            target=store,
            why="the current value, kept in memory only, to put it back if anything fails",
        ),
        PlanStep(
            action="check_current_credential",
            target=name,
            why="the current value works now (else a rollback could not bring it back)",
        ),
        PlanStep(
            action="create_credential",
            target=name,
            why=_CREATE[secret.kind].format(**where),
            changes=True,
        ),
        PlanStep(action="write_secret_store", target=store, why="the new value", changes=True),
    ]
    for c in secret.consumers.docker:
        steps.append(
            PlanStep(
                action="roll_consumer",
                target=f"docker {c.service}",
                why=f"recreate the container (same image and configuration) with {c.env} set to "
                "the new value, wait until it is healthy; one at a time",
                changes=True,
            )
        )
    for target in consumer_targets(env, secret)[len(secret.consumers.docker) :]:
        steps.append(
            PlanStep(
                action="roll_consumer",
                target=target,
                why="rolling restart (annotation kubectl.kubernetes.io/restartedAt), wait for "
                "the rollout: the new pods read the new value",
                changes=True,
            )
        )
    steps += [
        PlanStep(action="verify_credential", target=name, why="log in with the new value"),
        *[
            PlanStep(action="check_consumer", target=t, why="healthy on the new value")
            for t in consumer_targets(env, secret)
        ],
        PlanStep(
            action="revoke_credential",
            target=name,
            why=_REVOKE[secret.kind].format(**where),
            changes=secret.kind != "postgres_role",
        ),
        PlanStep(action=ROTATED_STEP, target=name, why="recorded: the secret's age starts again"),
    ]
    if secret.consumers.docker:
        steps.append(
            PlanStep(
                action="remove_previous_container",
                target=", ".join(f"docker {c.service}" for c in secret.consumers.docker),
                why="the replaced containers (they hold the old value in their env)",
                changes=True,
            )
        )
    return steps


def build_plan(
    env_name: str, env: Environment, chosen: list[tuple[int, RotatedSecret]], secret: str
) -> Plan:
    """The plan of a rotation run (pure)."""
    steps: list[PlanStep] = []
    if chosen and env.protected and env.approvals is not None:
        steps.append(
            PlanStep(
                action="request_approval",
                target=env_name,
                why=f"protected environment: {env.approvals.required} approver(s) other than "
                "the requester",
            )
        )
    for _index, s in chosen:
        steps += secret_steps(env, s)
    notes = [
        "Any failure before revoke_credential rolls back: the old value is made valid again "
        "(postgres: ALTER ROLE to it; redis: the new password removed; api_key: the new key "
        "revoked), the store gets the old value back and the consumers are rolled back to it. "
        "The ledger then says `rollback` and the run ends rolled-back.",
        "No value appears in this plan, the logs, the ledger or the report.",
    ]
    if secret == DUE:
        notes.insert(
            0,
            "secret_name=due: "
            + (", ".join(s.name for _i, s in chosen) or "nothing is due")
            + " (rotate_every passed since the last `rotated` step, or never rotated).",
        )
    return Plan(
        runbook=RUNBOOK,
        env=env_name,
        steps=steps,
        parameters={"secret_name": secret},
        notes=notes,
    )


# --- the report -------------------------------------------------------------------------------


class SecretRotation(BaseModel):
    """What happened to one secret. ``status``: rotated, rolled-back (failed and put back),
    failed (and the rollback did not finish: see ``rollback``), or planned (dry run)."""

    name: str
    kind: str
    status: Literal["planned", "rotated", "rolled-back", "failed"] = "planned"
    store: str = ""
    consumers: list[str] = Field(default_factory=list)
    error: str = ""
    rollback: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class RotationReport(BaseModel):
    env: str
    secret_name: str
    dry_run: bool = False
    secrets: list[SecretRotation] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """The run's ledger status: complete, rolled-back or failed (the worst of them)."""
        states = {s.status for s in self.secrets}
        if "failed" in states:
            return "failed"
        return ROLLED_BACK if ROLLED_BACK in states else "complete"


def render_rotation_report(report: RotationReport, started: datetime) -> str:
    lines = [
        f"## Secret rotation on `{report.env}`: {report.status}",
        "",
        f"Started {started:%Y-%m-%d %H:%M:%S} UTC, took {report.seconds:.1f} s; "
        f"secret_name={report.secret_name}.",
        "",
        "| secret | kind | status | store | consumers | error | rollback |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in report.secrets:
        cells = [
            s.name,
            s.kind,
            s.status,
            s.store,
            ", ".join(s.consumers),
            s.error.replace("|", "\\|").replace("\n", " ") or "-",
            "; ".join(s.rollback) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not report.secrets:
        lines.append("| - | - | nothing to rotate | - | - | - | - |")
    return "\n".join(lines) + "\n"
