"""The security review's ``access`` check: who holds access, against ``access`` of the
inventory (``AccessPolicy``). A list left out (None) is not audited, and the summary says so.

PostgreSQL (``check_postgres_access``): the roles of ``pg_roles`` (the built-in ``pg_*`` roles
left out), read over the database's transport as the other PostgreSQL tasks do (direct,
docker_exec, kubectl_exec) with a statement timeout:

* a superuser, or a member of one (it can ``SET ROLE`` to it), not in ``postgres_superusers``:
  critical;
* a member of a privileged built-in role (``PRIVILEGED_ROLES``) not in ``postgres_superusers``:
  high; a role with CREATEROLE or CREATEDB (or a member of one): medium;
* a login role not in ``postgres_logins`` nor an allowed superuser: high;
* a login role whose password expired (``rolvaliduntil`` past): medium.

Kubernetes (``check_kubernetes_access``): the subjects of the namespace's RoleBindings and of
the ClusterRoleBindings that bind a User, a Group or a ServiceAccount of the namespace (the API
server's own default bindings, labelled ``kubernetes.io/bootstrapping=rbac-defaults``, left
out). A subject not in ``kubernetes_subjects``: high, critical when bound to ``cluster-admin``.

A database or API that cannot be read is an unusable outcome naming it.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from connectors.postgres import STATEMENT_TIMEOUT_MS, postgres_for
from opsflow.errors import InputError, OpsflowError
from opsflow.inventory import AccessPolicy, Database, DockerTarget, KubernetesTarget
from opsflow.redaction import redact
from opsflow.security import CheckOutcome, SecurityFinding, Severity
from tasks.policy import probe_task

CHECK = "access"
PRIVILEGED_ROLES = (
    "pg_write_all_data",
    "pg_read_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
)
_IN = ", ".join(f"'{name}'" for name in PRIVILEGED_ROLES)
ROLES_SQL = f"""\
select json_build_object(
  'name', r.rolname, 'super', r.rolsuper, 'login', r.rolcanlogin,
  'createrole', r.rolcreaterole, 'createdb', r.rolcreatedb,
  'valid_until', r.rolvaliduntil, 'expired', coalesce(r.rolvaliduntil < now(), false),
  'member_of', coalesce((
    select json_agg(json_build_object('name', p.rolname, 'super', p.rolsuper,
                                      'creates', p.rolcreaterole or p.rolcreatedb)
                    order by p.rolname)
    from pg_roles p
    where p.oid <> r.oid and not r.rolsuper
      and (p.rolname in ({_IN}) or p.rolsuper or p.rolcreaterole or p.rolcreatedb)
      and pg_has_role(r.oid, p.oid, 'MEMBER')), '[]'::json)
)::text
from pg_roles r
where r.rolname !~ '^pg_'
order by r.rolname"""
CLUSTER_ADMIN = "cluster-admin"
DEFAULTS_LABEL = ("kubernetes.io/bootstrapping", "rbac-defaults")


def _finding(severity: Severity, target: str, summary: str, **details: Any) -> SecurityFinding:
    return SecurityFinding(
        severity=severity, check=CHECK, target=target, summary=redact(summary), details=details
    )


def grade_roles(
    db_name: str, roles: list[dict[str, Any]], policy: AccessPolicy
) -> list[SecurityFinding]:
    """The findings of ``ROLES_SQL``'s rows against ``policy`` (module docstring)."""
    supers, logins = policy.postgres_superusers, policy.postgres_logins
    findings: list[SecurityFinding] = []
    for role in roles:
        name = str(role["name"])
        target = f"postgres {db_name} role {name}"
        member_of = list(role.get("member_of") or [])
        allowed = supers is not None and name in supers
        if supers is not None and not allowed:
            via = [m["name"] for m in member_of if m["super"]]
            if role["super"] or via:
                how = "is a superuser" if role["super"] else f"is a member of superuser {via[0]}"
                findings.append(
                    _finding(
                        Severity.CRITICAL,
                        target,
                        f"role {name} {how}, not in access.postgres_superusers (fix: ALTER ROLE "
                        f"{name} NOSUPERUSER / REVOKE the membership, or add it to the list)",
                    )
                )
            granted = [m["name"] for m in member_of if m["name"] in PRIVILEGED_ROLES]
            if granted:
                findings.append(
                    _finding(
                        Severity.HIGH,
                        target,
                        f"role {name} is a member of {', '.join(granted)}, not in "
                        "access.postgres_superusers (fix: REVOKE the membership, or add it)",
                        roles=granted,
                    )
                )
            creates = [m["name"] for m in member_of if m["creates"] and not m["super"]]
            if not role["super"] and (role["createrole"] or role["createdb"] or creates):
                what = [k.upper() for k in ("createrole", "createdb") if role[k]]
                what += [f"member of {c}" for c in creates]
                findings.append(
                    _finding(
                        Severity.MEDIUM,
                        target,
                        f"role {name} can create roles or databases ({', '.join(what)}), not in "
                        "access.postgres_superusers (fix: ALTER ROLE ... NOCREATEROLE NOCREATEDB)",
                    )
                )
        if role["login"] and logins is not None and name not in logins and not allowed:
            findings.append(
                _finding(
                    Severity.HIGH,
                    target,
                    f"login role {name} is not in access.postgres_logins (fix: ALTER ROLE {name} "
                    "NOLOGIN or DROP it, or add it to the list)",
                )
            )
        if role["login"] and role["expired"]:
            findings.append(
                _finding(
                    Severity.MEDIUM,
                    target,
                    f"login role {name}'s password expired at {role['valid_until']} (fix: set a "
                    f"new password with VALID UNTIL, or ALTER ROLE {name} NOLOGIN)",
                    valid_until=role["valid_until"],
                )
            )
    return findings


def _not_audited(policy: AccessPolicy, names: tuple[str, ...]) -> str:
    missing = [n for n in names if getattr(policy, n) is None]
    return (
        f"; not audited (no list): {', '.join('access.' + n for n in missing)}" if missing else ""
    )


@probe_task("check_postgres_access", timeout_seconds=120)
def check_postgres_access(
    env_name: str,
    db: Database,
    field: str,
    policy: AccessPolicy,
    docker: DockerTarget | None,
    kubernetes: KubernetesTarget | None,
) -> CheckOutcome:
    """The PostgreSQL roles of ``db`` against ``policy`` (module docstring)."""
    target = f"postgres {db.name}"
    try:
        with postgres_for(db, field, docker, kubernetes) as pg:
            rows = pg.run_sql(ROLES_SQL, dbname=pg.dbname, timeout=STATEMENT_TIMEOUT_MS / 1000)
            where = pg.label
    except InputError:
        raise
    except OpsflowError as exc:
        return CheckOutcome.unusable(
            CHECK,
            target,
            redact(f"the roles of {target} ({env_name}) could not be read: {exc}"),
            f"check that {field} is reachable and its user may read pg_roles",
        )
    roles = [json.loads("|".join(row)) for row in rows if row]  # psql splits on "|"
    findings = grade_roles(db.name, roles, policy)
    logins = sum(1 for r in roles if r["login"])
    supers = sum(1 for r in roles if r["super"])
    summary = f"{where}: {len(roles)} role(s), {logins} login, {supers} superuser"
    summary += f"; {len(findings)} finding(s)" if findings else ""
    summary += _not_audited(policy, ("postgres_superusers", "postgres_logins"))
    return CheckOutcome(
        check=CHECK,
        target=target,
        summary=redact(summary),
        findings=findings,
        details={"roles": [r["name"] for r in roles]},
    )


def _subjects(binding: Any, namespace: str, cluster: bool) -> list[str]:
    """``Kind:name`` of a binding's subjects (of a ClusterRoleBinding: Users, Groups and the
    namespace's ServiceAccounts only)."""
    found: list[str] = []
    for subject in binding.subjects or []:
        if subject.kind == "ServiceAccount":
            home = subject.namespace or (None if cluster else namespace)
            if cluster and home != namespace:
                continue
            found.append(f"ServiceAccount:{home}/{subject.name}")
        elif subject.kind in ("User", "Group"):
            found.append(f"{subject.kind}:{subject.name}")
    return found


def grade_bindings(
    bindings: list[tuple[str, Any]], namespace: str, allowed: list[str]
) -> list[SecurityFinding]:
    """A finding per (subject, binding) whose subject is not ``allowed``; ``bindings`` are
    (``RoleBinding`` or ``ClusterRoleBinding``, object)."""
    findings: list[SecurityFinding] = []
    for kind, binding in bindings:
        meta, ref = binding.metadata, binding.role_ref
        labels = meta.labels or {}
        if labels.get(DEFAULTS_LABEL[0]) == DEFAULTS_LABEL[1]:
            continue
        where = f"{kind} {meta.name}" + (f" in {namespace}" if kind == "RoleBinding" else "")
        admin = ref.kind == "ClusterRole" and ref.name == CLUSTER_ADMIN
        for subject in _subjects(binding, namespace, kind == "ClusterRoleBinding"):
            if subject in allowed:
                continue
            findings.append(
                _finding(
                    Severity.CRITICAL if admin else Severity.HIGH,
                    subject,
                    f"{subject} is bound to {ref.kind} {ref.name} by {where}, not in "
                    f"access.kubernetes_subjects (fix: delete the binding or remove {subject} "
                    "from it, or add it to the list)",
                    binding=where,
                    role=f"{ref.kind}/{ref.name}",
                )
            )
    return findings


@probe_task("check_kubernetes_access", timeout_seconds=120)
def check_kubernetes_access(
    env_name: str, target: KubernetesTarget, policy: AccessPolicy
) -> CheckOutcome:
    """The RBAC subjects of ``target``'s namespace against ``policy`` (module docstring)."""
    namespace = target.namespace
    label = f"kubernetes {namespace}"
    if policy.kubernetes_subjects is None:
        return CheckOutcome(
            check=CHECK, target=label, summary="not audited (no list): access.kubernetes_subjects"
        )
    api = kube_api(target)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    try:
        with kube_errors(api, f"RoleBindings in namespace {namespace}"):
            local = rbac.list_namespaced_role_binding(
                namespace, _request_timeout=REQUEST_TIMEOUT
            ).items
        with kube_errors(api, "ClusterRoleBindings"):
            cluster = rbac.list_cluster_role_binding(_request_timeout=REQUEST_TIMEOUT).items
    except OpsflowError as exc:
        return CheckOutcome.unusable(
            CHECK,
            label,
            redact(f"the RBAC bindings of {label} ({env_name}) could not be read: {exc}"),
            "check the API address and that the identity may list rolebindings and "
            "clusterrolebindings",
        )
    finally:
        api.close()
    bindings = [("RoleBinding", b) for b in local] + [("ClusterRoleBinding", b) for b in cluster]
    findings = grade_bindings(bindings, namespace, policy.kubernetes_subjects)
    summary = f"{label}: {len(local)} RoleBinding(s), {len(cluster)} ClusterRoleBinding(s) read" + (
        f"; {len(findings)} finding(s)" if findings else "; every subject is listed"
    )
    return CheckOutcome(check=CHECK, target=label, summary=summary, findings=findings)
