"""The inventory: one YAML file describing environments and what exists in them.

``load_inventory`` reads ``OPSFLOW_INVENTORY`` (default ``./inventory.yaml``) and validates it
with pydantic. Every problem is reported as ``<path>: <problem> (fix: <what to change>)`` so an
operator can correct the file without reading code. Secrets are references (``secret:NAME``,
``env:VAR``) that are resolved only when a task needs them.

``fields`` holds the base model, the error and the shared field checks; ``models`` the models;
``changes`` when a change may run and how it is verified (maintenance windows, change freezes,
the verification window); ``load`` reading and error explanation.
"""

from opsflow.inventory.changes import ChangeFreeze, MaintenanceWindow, Verification
from opsflow.inventory.deploy import Deploy, DeployService
from opsflow.inventory.fields import ENV_NAME, InventoryError
from opsflow.inventory.incident import (
    RESPONSE_TARGETS,
    Alerting,
    AlertRule,
    Incident,
    Prometheus,
    Remediation,
    ScaleBounds,
    Severity,
    StatusPage,
)
from opsflow.inventory.load import (
    DEFAULT_INVENTORY,
    inventory_path,
    load_inventory,
    parse_inventory,
    validated,
)
from opsflow.inventory.maintenance import (
    BenchmarkProbe,
    LogArchive,
    Maintenance,
    MaintenanceMode,
    PostgresMaintenance,
    RedisCleanup,
    SqliteMaintenance,
)
from opsflow.inventory.models import (
    Access,
    Approvals,
    Approver,
    BackupStore,
    Database,
    DirectAccess,
    DockerExecAccess,
    DockerService,
    DockerTarget,
    Endpoint,
    Environment,
    HttpTarget,
    Inventory,
    KubectlExecAccess,
    KubernetesTarget,
    LogFile,
    Logs,
    MetricsSource,
    Notify,
    Recovery,
    RedisTarget,
    SmokeTest,
    Thresholds,
)

__all__ = [
    "DEFAULT_INVENTORY",
    "ENV_NAME",
    "RESPONSE_TARGETS",
    "Access",
    "AlertRule",
    "Alerting",
    "Approvals",
    "Approver",
    "BackupStore",
    "BenchmarkProbe",
    "ChangeFreeze",
    "Database",
    "Deploy",
    "DeployService",
    "DirectAccess",
    "DockerExecAccess",
    "DockerService",
    "DockerTarget",
    "Endpoint",
    "Environment",
    "HttpTarget",
    "Incident",
    "Inventory",
    "InventoryError",
    "KubectlExecAccess",
    "KubernetesTarget",
    "LogArchive",
    "LogFile",
    "Logs",
    "Maintenance",
    "MaintenanceMode",
    "MaintenanceWindow",
    "MetricsSource",
    "Notify",
    "PostgresMaintenance",
    "Prometheus",
    "Recovery",
    "RedisCleanup",
    "RedisTarget",
    "Remediation",
    "ScaleBounds",
    "Severity",
    "SmokeTest",
    "SqliteMaintenance",
    "StatusPage",
    "Thresholds",
    "Verification",
    "inventory_path",
    "load_inventory",
    "parse_inventory",
    "validated",
]
