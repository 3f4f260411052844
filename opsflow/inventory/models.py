"""The inventory's models: environments and what exists in them (databases, endpoints,
stores, targets, approvals, windows). Field checks live in ``opsflow.inventory.fields``."""

from __future__ import annotations

import difflib
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from opsflow.backup_names import RESERVED, name_clashes
from opsflow.durations import parse_duration
from opsflow.errors import InputError
from opsflow.inventory.changes import ChangeFreeze, MaintenanceWindow
from opsflow.inventory.deploy import Deploy, check_services
from opsflow.inventory.fields import (
    ENV_NAME,
    Model,
    check_no_credentials,
    check_secret_field,
    check_url,
    positive_duration,
)
from opsflow.inventory.http import HttpTarget, Notify
from opsflow.inventory.incident import Alerting, AlertRule, Incident, ScaleBounds, check_alerting
from opsflow.inventory.maintenance import Maintenance, MaintenanceMode, check_cleanup_targets
from opsflow.inventory.security import AccessPolicy, RotatedSecret, Security, check_secrets
from opsflow.secrets import is_reference


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(
            f"{value!r} is not a valid regular expression: {exc} (fix: correct the pattern, "
            "e.g. ERROR|FATAL)"
        ) from exc
    return value


class Thresholds(Model):
    """Health thresholds; defaults are the seed manuals' alert levels."""

    error_rate_pct: float = Field(5.0, ge=0, le=100)
    p95_latency_ms: float = Field(500.0, gt=0)
    memory_pct: float = Field(90.0, gt=0, le=100)
    cpu_pct: float = Field(90.0, gt=0, le=100)
    disk_pct: float = Field(85.0, gt=0, le=100)
    cert_days: int = Field(14, ge=0)
    response_ms: float = Field(1000.0, gt=0)
    restarts: int = Field(5, ge=0)
    log_errors: int = Field(10, ge=0)
    connections_pct: float = Field(80.0, gt=0, le=100)
    redis_memory_pct: float = Field(90.0, gt=0, le=100)
    redis_hit_rate_pct: float = Field(80.0, ge=0, le=100)
    backup_max_age: timedelta = Field(default=timedelta(hours=26))

    @field_validator("backup_max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return positive_duration(value)


class Endpoint(HttpTarget):
    kind: Literal["basic", "detailed", "ready", "live"] = "basic"
    expect_status: int = Field(200, ge=100, le=599)
    expect_json_status: list[str] | None = Field(
        None, description="accepted values of the JSON body's `status` field, e.g. [healthy, ok]"
    )
    timeout: timedelta = Field(default=timedelta(seconds=10))
    verify_tls: bool = True
    ca_file: str | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return positive_duration(value)


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_JSON_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


class SmokeTest(Endpoint):
    """One request after a change and what its answer must hold (``tasks.http.smoke``)."""

    method: HttpMethod = "GET"
    body: str | None = Field(None, description="request body (POST, PUT, PATCH, DELETE)")
    expect_body: str | None = Field(None, description="a substring the response body holds")
    expect_json: dict[str, Any] | None = Field(
        None, description='dotted path -> expected value, e.g. {"data.version": "v3"}'
    )

    @field_validator("expect_json")
    @classmethod
    def _paths(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for path in value or {}:
            if not _JSON_PATH.match(path):
                raise ValueError(
                    f"{path!r} is not a dotted path (fix: write keys joined by dots, list "
                    "indexes as numbers, e.g. data.version or items.0.id)"
                )
        return value

    @model_validator(mode="after")
    def _method_fits(self) -> SmokeTest:
        if self.body is not None and self.method in ("GET", "HEAD", "OPTIONS"):
            raise ValueError(
                f"a {self.method} request carries no body (fix: use method: POST, PUT or "
                "PATCH, or remove `body`)"
            )
        if self.method == "HEAD" and (self.expect_body is not None or self.expect_json):
            raise ValueError(
                "a HEAD answer has no body to check (fix: use method: GET, or remove "
                "expect_body / expect_json)"
            )
        return self


class MetricsSource(HttpTarget):
    """A Prometheus text endpoint (``/metrics``) whose series are checked against thresholds."""

    error_rate: str | None = Field(
        None, description="metric family counting requests, labelled by status (default: auto)"
    )


class LogFile(Model):
    path: str
    pattern: str = Field("ERROR", description="regular expression marking an error line")

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        return check_regex(value)


class Logs(Model):
    window: timedelta = Field(default=timedelta(hours=1))
    files: list[LogFile] = []
    pattern: str = "ERROR"

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return positive_duration(value)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        return check_regex(value)


class DirectAccess(Model):
    direct: Literal[True] = True


class DockerExecAccess(Model):
    docker_exec: str = Field(description="name of the container running the database")


class KubectlExecAccess(Model):
    kubectl_exec: str = Field(description="deployment (or pod) running the database")
    container: str | None = None


def _access_kind(value: Any) -> str:
    keys = value if isinstance(value, dict) else vars(value) if hasattr(value, "__dict__") else {}
    if "docker_exec" in keys:
        return "via:docker_exec"
    if "kubectl_exec" in keys:
        return "via:kubectl_exec"
    return "via:direct"


Access = Annotated[
    Annotated[DirectAccess, Tag("via:direct")]
    | Annotated[DockerExecAccess, Tag("via:docker_exec")]
    | Annotated[KubectlExecAccess, Tag("via:kubectl_exec")],
    Discriminator(_access_kind),
]


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")


def _check_table_name(value: str) -> str:
    if not _TABLE_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a table name (fix: write a simple identifier such as "
            "pgbench_accounts, or schema.table such as public.pgbench_accounts: letters, "
            "digits, '_' or '$', at most 63 characters each, starting with a letter or '_')"
        )
    return value


TableName = Annotated[str, AfterValidator(_check_table_name)]


class Database(Model):
    name: str
    kind: Literal["postgres", "sqlite"]
    dsn: str | None = Field(None, description="PostgreSQL DSN, usually env:VAR or secret:NAME")
    path: str | None = Field(None, description="SQLite file path")
    via: Access = Field(default_factory=DirectAccess)
    checksum_tables: list[TableName] = Field(
        default_factory=list,
        description="tables whose content checksum is recorded at backup time and compared "
        "by the DR drill",
    )

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        return check_secret_field(value, "the DSN")

    @model_validator(mode="after")
    def _kind_fields(self) -> Database:
        if self.kind == "postgres" and not self.dsn:
            raise ValueError(
                "a postgres database needs `dsn` (fix: add dsn: env:VAR or secret:NAME)"
            )
        if self.kind == "sqlite":
            if not self.path:
                raise ValueError("a sqlite database needs `path` (fix: add path: file.db)")
            if not isinstance(self.via, DirectAccess):
                raise ValueError("a sqlite database is reached directly (fix: remove `via`)")
            if self.checksum_tables:
                raise ValueError(
                    "checksum_tables is supported for postgres databases only "
                    "(fix: remove checksum_tables from this sqlite database)"
                )
        dupes = sorted({t for t in self.checksum_tables if self.checksum_tables.count(t) > 1})
        if dupes:
            raise ValueError(
                f"checksum_tables lists {dupes} more than once (fix: list each table once)"
            )
        return self


class RedisTarget(Model):
    name: str
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_secret_field(value, "the Redis URL")
        return check_url(value, ("redis", "rediss", "unix"), references=True)


class BackupStore(Model):
    url: str
    retention_days: int = Field(30, ge=1)
    encryption_key: str | None = None
    endpoint_url: str | None = Field(None, description="S3 API endpoint (for MinIO and the like)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_no_credentials(value, "the store URL", references=False, userinfo="any")
        return check_url(value, ("file", "s3"))

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_no_credentials(value, "the store endpoint URL", references=False, userinfo="any")
        return check_url(value, ("http", "https"))

    @field_validator("encryption_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError(
                "holds a literal key (fix: store the key in a secret and write env:VAR or "
                "secret:NAME here)"
            )
        return value


APPROVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Approver(Model):
    """One approver's credential: the TOTP secret (RFC 6238, base32) of their authenticator
    app, as a reference; the answer to an approval carries a one-time code made from it."""

    totp: str = Field(description="the TOTP secret (base32) as env:VAR or secret:NAME")

    @field_validator("totp")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not is_reference(value):
            raise ValueError(
                "holds a literal TOTP secret (fix: store it in a secret and write env:VAR or "
                "secret:NAME here, see docs/approvals.md)"
            )
        return value


class Approvals(Model):
    """Who may approve a protected environment's changes, and how many must."""

    approvers: dict[str, Approver] = Field(min_length=1)
    required: int = Field(1, ge=1, description="distinct approvers needed (M of N)")
    timeout: timedelta = Field(default=timedelta(hours=1))
    four_eyes: bool = True

    @field_validator("approvers", mode="before")
    @classmethod
    def _not_a_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            names = ", ".join(f"{n}: {{totp: env:{str(n).upper()}_TOTP}}" for n in value[:3])
            raise ValueError(
                "is a list of names, and a name proves nothing: every approver now needs a "
                "one-time-code secret (fix: write approvers: {"
                + (names or "alice: {totp: env:ALICE_TOTP}")
                + "}, each TOTP secret a reference; docs/approvals.md says how to make one)"
            )
        return value

    @field_validator("approvers")
    @classmethod
    def _names(cls, value: dict[str, Approver]) -> dict[str, Approver]:
        for name in value:
            if not APPROVER_NAME.match(name):
                raise ValueError(
                    f"approver name {name!r} is not allowed (fix: use a login name: letters, "
                    "digits, '.', '_', '-' or '@', at most 64 characters)"
                )
        folded = [n.casefold() for n in value]
        dupes = sorted({n for n in value if folded.count(n.casefold()) > 1})
        if dupes:
            raise ValueError(f"approvers {dupes} differ only in case (fix: list each person once)")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        parsed = parse_duration(value)
        if parsed.total_seconds() < 1:
            raise ValueError("must be at least 1s (fix: write e.g. 30m or 1h)")
        return parsed

    @model_validator(mode="after")
    def _enough_approvers(self) -> Approvals:
        if self.required > len(self.approvers):
            raise ValueError(
                f"required is {self.required} but only {len(self.approvers)} approver(s) are "
                "listed (fix: list more approvers or lower required)"
            )
        return self


class KubernetesTarget(Model):
    namespace: str
    deployment: str | None = None
    container: str | None = None
    label_selector: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = Field(None, description="API server URL; overrides kubeconfig")
    token: str | None = Field(None, description="bearer token reference (env:/secret:)")
    verify_tls: bool = True

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_no_credentials(value, "the API URL", references=False, userinfo="any")
        return check_url(value, ("http", "https"))

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError(
                "holds a literal token (fix: store it in a secret and write env:VAR or "
                "secret:NAME here)"
            )
        return value


class DockerService(Model):
    name: str
    container: str
    image: str | None = None
    health_url: str | None = None

    @field_validator("health_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_no_credentials(value, "the health URL", references=False)
        return check_url(value, ("http", "https"))


class DockerTarget(Model):
    host: str | None = Field(None, description="Docker daemon URL; default: DOCKER_HOST")
    services: list[DockerService] = []

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_no_credentials(value, "the Docker host URL", references=False, userinfo="any")
        return check_url(value, ("unix", "tcp", "ssh", "http", "https", "npipe"))


class Recovery(Model):
    """Recovery targets the DR drill measures against (seed 000: RTO 4 h, RPO 4 h; critical
    systems RTO 1 h, RPO 15 min)."""

    rto: timedelta = Field(
        default=timedelta(hours=4),
        description="recovery time objective: longest acceptable restore + verify time",
    )
    rpo: timedelta = Field(
        default=timedelta(hours=4),
        description="recovery point objective: oldest acceptable newest backup",
    )

    @field_validator("rto", "rpo", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        parsed = parse_duration(value)
        if parsed.total_seconds() < 0:
            raise ValueError("a recovery target cannot be negative (fix: write e.g. 4h or 15m)")
        return parsed


class Environment(Model):
    description: str = ""
    protected: bool = False
    approvals: Approvals | None = None
    endpoints: list[Endpoint] = []
    smoke_tests: list[SmokeTest] = []
    metrics: list[MetricsSource] = []
    logs: Logs = Field(default_factory=Logs)
    disks: list[str] = Field(default_factory=lambda: ["/"])
    kubernetes: KubernetesTarget | None = None
    docker: DockerTarget | None = None
    databases: list[Database] = []
    redis: list[RedisTarget] = []
    backup_store: BackupStore | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    maintenance_window: MaintenanceWindow | None = None
    change_freezes: list[ChangeFreeze] = []
    maintenance_mode: MaintenanceMode | None = None
    maintenance: Maintenance = Field(default_factory=Maintenance)
    recovery: Recovery = Field(default_factory=Recovery)
    notify: list[Notify] = []
    deploy: Deploy | None = None
    incident: Incident = Field(default_factory=Incident)
    alerting: Alerting = Field(default_factory=Alerting)
    alert_rules: list[AlertRule] = []
    scaling: dict[str, ScaleBounds] = Field(
        default_factory=dict, description="replica bounds per service / deployment name"
    )
    security: Security = Field(default_factory=Security)
    access: AccessPolicy = Field(default_factory=AccessPolicy)
    secrets: list[RotatedSecret] = Field(default_factory=list, description="rotated secrets")

    @model_validator(mode="after")
    def _deploy_targets(self) -> Environment:
        if self.deploy is not None:
            k8s = self.kubernetes
            filled = check_services(
                self.deploy,
                docker_services=[s.name for s in self.docker.services] if self.docker else None,
                kubernetes=k8s is not None,
                k8s_default=(k8s.deployment, k8s.container) if k8s else (None, None),
                metrics=[m.name for m in self.metrics],
            )
            object.__setattr__(self, "deploy", filled)  # target and services filled in
        return self

    @model_validator(mode="after")
    def _protected_needs_approvers(self) -> Environment:
        if self.protected and self.approvals is None:
            raise ValueError(
                "a protected environment needs `approvals` "
                "(fix: add approvals: {approvers: {alice: {totp: env:ALICE_TOTP}}} or set "
                "protected: false)"
            )
        if self.approvals is not None and self.approvals.timeout.total_seconds() <= 0:
            raise ValueError(
                "approvals.timeout must be longer than zero: no approver could answer in time "
                "(fix: write e.g. timeout: 1h)"
            )
        for label, items in (("endpoints", self.endpoints), ("metrics", self.metrics)):
            names = [item.name for item in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(
                    f"duplicate {label} name(s) {dupes} (fix: give each a unique name)"
                )
        check_cleanup_targets(self.maintenance, [r.name for r in self.redis])
        check_alerting(self.alert_rules)
        check_secrets(
            self.secrets,
            databases={db.name: db.kind for db in self.databases},
            redis=[r.name for r in self.redis],
            docker_services=[s.name for s in self.docker.services] if self.docker else [],
            kubernetes=self.kubernetes is not None,
        )
        places = [(f"databases[{i}] ({db.kind})", db.name) for i, db in enumerate(self.databases)]
        clashes = name_clashes(places + [(f"redis[{i}]", r.name) for i, r in enumerate(self.redis)])
        if clashes:
            reserved = " or ".join(f"`{name}`" for name in RESERVED)
            raise ValueError(
                "; ".join(clashes) + " (fix: give every database and Redis target of the "
                f"environment a unique name other than {reserved}: backups are stored, catalogued "
                "and restored by environment, kind and name)"
            )
        return self


class Inventory(Model):
    environments: dict[str, Environment] = Field(min_length=1)
    alert_rules: list[AlertRule] = Field(
        default_factory=list,
        description="rules shared by every environment: the alert's `env` label names it",
    )

    @field_validator("environments")
    @classmethod
    def _names(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(
                    f"environment name {name!r} is not allowed (fix: use lowercase letters, "
                    "digits and dashes, starting with a letter, e.g. prod-eu)"
                )
        return value

    def environment(self, name: str) -> Environment:
        """Look an environment up; an unknown name is an ``InputError`` listing the known ones."""
        try:
            return self.environments[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.environments, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                "environment",
                f"unknown environment {name!r}",
                f"{hint}choose one of: {', '.join(sorted(self.environments))}",
            ) from None
