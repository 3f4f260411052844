"""Security in the inventory: what the weekly security review checks (``security``), who may
hold access (``access``: the allow-lists the access audit compares with; audit scripts rely on
these key names) and the secrets opsflow rotates (``secrets``), seeds 000-004.

```yaml
security:
  advisories: {path: /var/lib/osv}            # or {url: https://mirror/osv.json}
  python: [{name: api, requirements: /srv/api/requirements.txt}, {name: jobs, container: jobs-1}]
  npm: [{name: web, lock: /srv/web/package-lock.json}]
  images: [{container: api-1}, {pod: api}]    # packages inside (dpkg status, Python), age
  tls: {urls: [https://api.example.com], min_version: TLSv1.2}
  logins: {files: [/var/log/auth.log], threshold: 20, window: 1h}
  secret_max_age: 90d
access: {postgres_superusers: [postgres], postgres_logins: [app], kubernetes_subjects: [...]}
secrets:
  - name: app-db
    kind: postgres_role                       # or redis_acl, api_key
    role: app
    admin: main                               # the database (or Redis target) that changes it
    store: {prefect_secret: app-db-password}  # or {kubernetes_secret: app-db, key: password}
    consumers: {docker: [{service: api, env: DB_PASSWORD}]}
    rotate_every: 30d
```
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from opsflow.inventory.fields import Model, PositiveDuration, check_headers, check_url

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _one_of(model: Model, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        listed = " or ".join(f"`{f}`" for f in fields)
        raise ValueError(f"{what} needs exactly one of {listed} (fix: keep one of them)")


class AdvisorySource(Model):
    """OSV advisories (https://ossf.github.io/osv-schema/): a directory of OSV JSON files
    (``path``, searched recursively, as osv.dev's ecosystem exports unpack) or one HTTP(S)
    document (``url``) holding a record, a list of records or ``{"vulns": [...]}``. The
    operator keeps it synced; opsflow never reaches the internet for it."""

    path: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="for `url`")
    timeout: PositiveDuration = Field(default=timedelta(seconds=30))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, ("http", "https"), references=True)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @model_validator(mode="after")
    def _one(self) -> AdvisorySource:
        _one_of(self, ("path", "url"), "security.advisories")
        return self


class PythonEnvironment(Model):
    """A Python environment whose packages are checked: a pinned requirements or lock file
    (``name==version`` lines, as ``pip freeze`` and ``pip-compile`` write them), or the
    packages installed inside a Docker container or a pod (a deployment of the environment's
    namespace; read with ``importlib.metadata``, what ``pip freeze`` lists, as Debian's python3
    has no pip) through the same transports as the backups."""

    name: str
    requirements: str | None = None
    container: str | None = None
    pod: str | None = None
    python: str = Field("python3", description="the interpreter inside the container or pod")

    @model_validator(mode="after")
    def _one(self) -> PythonEnvironment:
        _one_of(self, ("requirements", "container", "pod"), f"security.python {self.name}")
        return self


class NpmLock(Model):
    """An npm ``package-lock.json`` (lockfileVersion 1, 2 or 3)."""

    name: str
    lock: str


class ImageScan(Model):
    """The image of a running Docker container or of a pod (a deployment of the namespace):
    its Debian packages (``/var/lib/dpkg/status``) and Python packages (``importlib.metadata``,
    when it has python3) are matched against the advisories, and its age (Docker) against
    ``max_age``."""

    container: str | None = None
    pod: str | None = None
    max_age: PositiveDuration = Field(default=timedelta(days=90))

    @model_validator(mode="after")
    def _one(self) -> ImageScan:
        _one_of(self, ("container", "pod"), "security.images[]")
        return self

    @property
    def name(self) -> str:
        return str(self.container or self.pod)


class TlsCheck(Model):
    """TLS checks of every https endpoint and smoke test of the environment plus ``urls``:
    certificate expiry (expired: critical; within ``thresholds.cert_days``: high), a protocol
    older than ``min_version`` or a weak cipher accepted: high."""

    urls: list[str] = []
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))
    ca_file: str | None = Field(None, description="CA bundle that signs the certificates")

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [check_url(url, ("https",)) for url in value]


# sshd's "Failed password for [invalid user] NAME from IP" and the like; the user part is an
# optional group that is tried first (a lazy ".*?" before it would skip it every time)
DEFAULT_LOGIN_PATTERN = (
    r"(?i)(?:failed (?:login|password)|authentication failure|invalid credentials)"
    r"(?:.*?\bfor (?:invalid user )?(?P<user>[^\s;,]+))?.*?\bfrom (?P<ip>[0-9A-Fa-f.:]+)"
)


class FailedLogins(Model):
    """Failed-login lines in log files (and the environment's container logs with
    ``containers: true``), counted per source IP and per user over ``window``; a count at or
    over ``threshold`` is a finding (high: brute force). ``pattern`` is a regular expression
    with the named groups ``ip`` and (optionally) ``user``."""

    files: list[str] = []
    containers: bool = False
    pattern: str = DEFAULT_LOGIN_PATTERN
    window: PositiveDuration = Field(default=timedelta(hours=1))
    threshold: int = Field(20, ge=1)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc} (fix: correct it)") from None
        if "ip" not in compiled.groupindex:
            raise ValueError(
                "has no named group `ip` (fix: capture the source address as (?P<ip>...))"
            )
        return value


class Security(Model):
    advisories: AdvisorySource | None = None
    python: list[PythonEnvironment] = []
    npm: list[NpmLock] = []
    images: list[ImageScan] = []
    tls: TlsCheck = Field(default_factory=TlsCheck)
    logins: FailedLogins | None = None
    secret_max_age: PositiveDuration = Field(
        default=timedelta(days=90),
        description="age over which a Kubernetes Secret or Prefect Secret block is overdue",
    )
    incident_on_critical: bool = Field(
        True, description="a critical finding starts an incident run (else: notify)"
    )

    @model_validator(mode="after")
    def _advisories_for_packages(self) -> Security:
        if (self.python or self.npm or self.images) and self.advisories is None:
            raise ValueError(
                "security.python, npm or images need `advisories` to match packages against "
                "(fix: add advisories: {path: /var/lib/osv} with OSV records you keep synced)"
            )
        return self


class AccessPolicy(Model):
    """Who may hold access; anything the audit finds that is not listed is a finding. A list
    left out (None) is not audited; an empty list allows nobody. Kubernetes subjects are
    written ``Kind:name`` (``User:alice``, ``Group:ops``, ``ServiceAccount:ns/name``)."""

    postgres_superusers: list[str] | None = None
    postgres_logins: list[str] | None = None
    kubernetes_subjects: list[str] | None = None

    @field_validator("kubernetes_subjects")
    @classmethod
    def _subjects(cls, value: list[str] | None) -> list[str] | None:
        for subject in value or []:
            kind, _, name = subject.partition(":")
            if kind not in ("User", "Group", "ServiceAccount") or not name:
                raise ValueError(
                    f"subject {subject!r} is not Kind:name (fix: write User:alice, Group:ops "
                    "or ServiceAccount:namespace/name)"
                )
        return value


class SecretStore(Model):
    """Where the current value lives: a Prefect Secret block, or a key of a Kubernetes Secret
    in the environment's namespace."""

    prefect_secret: str | None = None
    kubernetes_secret: str | None = None
    key: str | None = Field(None, description="the key in the Kubernetes Secret")

    @model_validator(mode="after")
    def _one(self) -> SecretStore:
        _one_of(self, ("prefect_secret", "kubernetes_secret"), "store")
        if self.kubernetes_secret is not None and not self.key:
            raise ValueError("store.kubernetes_secret needs `key` (fix: e.g. key: password)")
        if self.prefect_secret is not None and self.key is not None:
            raise ValueError("store.key is for kubernetes_secret (fix: remove it)")
        return self

    def describe(self) -> str:
        if self.prefect_secret is not None:
            return f"Prefect Secret block {self.prefect_secret}"
        return f"Kubernetes Secret {self.kubernetes_secret} key {self.key}"


class DockerConsumer(Model):
    """A Docker service (of ``docker.services``) that reads the secret from an environment
    variable: it is recreated with the new value (same configuration), one at a time."""

    service: str
    env: str = Field(description="the container's environment variable holding the value")

    @field_validator("env")
    @classmethod
    def _env(cls, value: str) -> str:
        if not _ENV_VAR.match(value):
            raise ValueError(f"{value!r} is not an environment variable name (fix: e.g. DB_PASS)")
        return value


class Consumers(Model):
    """What uses the secret and is rolled onto the new value: Docker services, and Kubernetes
    deployments of the namespace (a rolling restart: they read the Kubernetes Secret)."""

    docker: list[DockerConsumer] = []
    kubernetes: list[str] = []

    @property
    def empty(self) -> bool:
        return not self.docker and not self.kubernetes


class ApiKeyEndpoints(Model):
    """An application's API-key endpoints (seed 002: generate new, revoke old). ``create``
    is POSTed and answers JSON with the new key (``key_field``) and its id (``id_field``);
    ``revoke`` is called with ``{id}`` in its URL replaced by the old key's id; ``verify`` is
    fetched with the new key in ``header`` and must answer 2xx. ``headers`` carry the admin
    credential (a reference)."""

    create: str
    revoke: str
    verify: str
    revoke_method: Literal["DELETE", "POST"] = "DELETE"
    header: str = Field("X-API-Key", description="the request header the key goes in")
    key_field: str = "key"
    id_field: str = "id"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))

    @field_validator("create", "revoke", "verify")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, ("http", "https"), references=True)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @model_validator(mode="after")
    def _revoke_names_id(self) -> ApiKeyEndpoints:
        if "{id}" not in self.revoke:
            raise ValueError(
                "api.revoke must contain {id}, where the old key's id goes (fix: e.g. "
                "http://app/api/keys/{id})"
            )
        return self


SecretKind = Literal["postgres_role", "redis_acl", "api_key"]


class RotatedSecret(Model):
    """A secret opsflow rotates (``opsflow run rotate-secret --param secret_name=NAME``).

    ``postgres_role``: ``role``'s password, changed over the connection of database ``admin``;
    ``redis_acl``: ACL user ``role``'s password over Redis target ``admin``; ``api_key``: a
    key of the application's ``api`` endpoints."""

    name: str
    kind: SecretKind
    role: str | None = Field(None, description="PostgreSQL role or Redis ACL user")
    admin: str | None = Field(None, description="the database or Redis target that changes it")
    api: ApiKeyEndpoints | None = None
    store: SecretStore
    consumers: Consumers = Field(default_factory=Consumers)
    rotate_every: PositiveDuration = Field(default=timedelta(days=30))
    length: int = Field(32, ge=16, le=128, description="characters of a generated value")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"secret name {value!r} is not allowed (fix: lowercase letters, digits, ., _ and -)"
            )
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> RotatedSecret:
        if self.kind == "api_key":
            if self.api is None:
                raise ValueError(
                    f"secret {self.name}: an api_key needs `api` (fix: add api: {{create: "
                    "..., revoke: .../{id}, verify: ...}})"
                )
        elif self.role is None or self.admin is None:
            raise ValueError(
                f"secret {self.name}: a {self.kind} needs `role` and `admin` (fix: name the "
                "role or ACL user, and the database or Redis target of this environment that "
                "changes it)"
            )
        return self


def check_secrets(
    secrets: list[RotatedSecret],
    *,
    databases: dict[str, str],
    redis: list[str],
    docker_services: list[str],
    kubernetes: bool,
) -> None:
    """The environment-level checks of ``secrets``: unique names, ``admin`` naming a
    database (PostgreSQL, name → kind) or Redis target of the environment, consumers and stores
    that the environment has."""
    names = [s.name for s in secrets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate secrets name(s) {dupes} (fix: give each a unique name)")
    for s in secrets:
        where = f"secrets {s.name}"
        if s.kind == "postgres_role" and databases.get(str(s.admin)) != "postgres":
            known = sorted(n for n, kind in databases.items() if kind == "postgres")
            raise ValueError(
                f"{where}: admin {s.admin!r} is not a PostgreSQL database of this environment "
                f"(fix: one of {known})"
            )
        if s.kind == "redis_acl" and s.admin not in redis:
            raise ValueError(
                f"{where}: admin {s.admin!r} is not a Redis target of this environment "
                f"(fix: one of {sorted(redis)})"
            )
        for consumer in s.consumers.docker:
            if consumer.service not in docker_services:
                raise ValueError(
                    f"{where}: consumer {consumer.service!r} is not in docker.services "
                    f"(fix: one of {sorted(docker_services)})"
                )
        needs_k8s = s.consumers.kubernetes or s.store.kubernetes_secret is not None
        if needs_k8s and not kubernetes:
            raise ValueError(
                f"{where}: a Kubernetes Secret store or consumer needs `kubernetes` "
                "(fix: add kubernetes: {namespace: ...} to the environment)"
            )
