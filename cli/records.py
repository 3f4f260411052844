"""Reading what happened: ``history``, ``inventory check``, ``backups list`` and ``ledger
verify``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    app,
    backups_app,
    check_recorded,
    err,
    fail,
    inventory_app,
    ledger_app,
    new_table,
    out,
    status_word,
)
from opsflow.errors import InputError
from opsflow.redaction import redact
from opsflow.units import format_bytes

MAX_LIMIT = 100_000
"""The largest --limit a listing takes."""


class BackupKind(StrEnum):
    postgres = "postgres"
    sqlite = "sqlite"
    redis = "redis"
    config = "config"
    log = "log"  # archived log files (listed; never restored)


@app.command()
def history(
    env: Annotated[str | None, typer.Option("--env", "-e")] = None,
    runbook: Annotated[str | None, typer.Option("--runbook", "-r")] = None,
    limit: Annotated[int, typer.Option(help="how many runs", min=1, max=MAX_LIMIT)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent runs from the ledger. ``--env`` may also name an environment that is no longer in
    the inventory, as long as the ledger has records of it."""
    from opsflow.ledger import Ledger

    ledger = Ledger()
    check_recorded(ledger, env, runbook)
    rows = ledger.runs(env=env, runbook=runbook, limit=limit)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "flow_run_id": r.flow_run_id,
                        "runbook": r.runbook,
                        "env": r.env,
                        "status": r.status,
                        "started_at": r.started_at.isoformat(),
                        "finished_at": r.finished_at.isoformat(),
                        "triggered_by": r.triggered_by,
                        "summary": r.summary,
                    }
                    for r in rows
                ]
            )
        )
        return
    table = new_table("opsflow history", "finished (UTC)", "runbook", "env", "status", "by")
    for column in ("summary", "flow run"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            f"{r.finished_at:%Y-%m-%d %H:%M}",
            r.runbook,
            r.env,
            status_word(r.status),
            r.triggered_by,
            escape(r.summary),
            r.flow_run_id,
        )
    out.print(table)


@inventory_app.command("check")
def inventory_check(
    path: Annotated[
        str | None, typer.Argument(help="inventory file (default OPSFLOW_INVENTORY)")
    ] = None,
) -> None:
    """Validate the inventory (its alert rules against prefect.yaml's runbooks too) and
    summarise each environment."""
    from opsflow.inventory import inventory_path, load_inventory

    try:
        inventory = load_inventory(path)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    from deployments.runbooks import runbooks
    from opsflow.alerts import check_rules

    problems = check_rules(inventory, runbooks())
    if problems:
        fail(
            EXIT_BAD_INPUT,
            f"invalid inventory {path or inventory_path()}: alert rules:\n  "
            + "\n  ".join(problems),
        )
    table = new_table(
        f"inventory {path or inventory_path()}: OK",
        *("environment", "protected", "endpoints", "databases", "redis", "platform", "backups"),
    )
    for name, env in sorted(inventory.environments.items()):
        platform = ("kubernetes" if env.kubernetes else "") + (" docker" if env.docker else "")
        table.add_row(
            name,
            "yes" if env.protected else "no",
            str(len(env.endpoints)),
            str(len(env.databases)),
            str(len(env.redis)),
            platform.strip() or "-",
            env.backup_store.url if env.backup_store else "-",
        )
    out.print(table)


@backups_app.command("list")
def backups_list(
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    database: Annotated[
        str | None, typer.Option("--database", "-d", help="only backups of this name")
    ] = None,
    kind: Annotated[
        BackupKind | None,
        typer.Option("--kind", help="only this kind", case_sensitive=False),
    ] = None,
    limit: Annotated[
        int, typer.Option(help="how many backups, newest first", min=1, max=MAX_LIMIT)
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the catalog as JSON")] = False,
) -> None:
    """Catalogued backups of an environment that may be restored (complete or verified), newest
    first, with the kind and name each is a backup of. Backups that retention deleted (or is
    deleting) are never listed."""
    from opsflow import catalog
    from opsflow.ledger import Ledger

    ledger = Ledger()
    check_recorded(ledger, env)
    rows = catalog.good(catalog.fold(ledger.backups(env=env, database=database, limit=None)))
    rows = [r for r in rows if kind is None or r.kind == kind.value][:limit]
    if as_json:
        out.print_json(
            redact(
                json.dumps(
                    [
                        {
                            "backup_id": r.backup_id,
                            "env": r.env,
                            "database": r.database,
                            "name": r.database,
                            "kind": r.kind,
                            "status": r.status,
                            "created_at": r.created_at.isoformat(),
                            "store_url": r.store_url,
                            "key": r.key,
                            "bytes": r.bytes,
                            "sha256": r.sha256,
                            "duration_ms": r.duration_ms,
                            "flow_run_id": r.flow_run_id,
                            "verified_at": r.verified_at,
                        }
                        for r in rows
                    ]
                )
            )
        )
        return
    if not rows:
        out.print(f"no backups catalogued for {env} (run: opsflow run backup --env {env})")
        return
    table = new_table(f"backups of {env}", "created (UTC)", "kind", "name", "status", "size")
    table.add_column("sha256")
    table.add_column("key", overflow="fold")
    for r in rows:
        table.add_row(
            f"{r.created_at:%Y-%m-%d %H:%M}",
            r.kind,
            r.database,
            status_word(r.status),
            format_bytes(r.bytes),
            r.sha256[:12],
            redact(r.key),
        )
    out.print(table)
    stores = sorted({r.store_url for r in rows})
    out.print(f"store: {redact(', '.join(stores))} (ids and full sha256: --json)")


@ledger_app.command("verify")
def ledger_verify(
    store: Annotated[
        list[str] | None,
        typer.Option("--store", help="also check the heads published in this backup store URL"),
    ] = None,
    inventory_stores: Annotated[
        bool,
        typer.Option("--inventory-stores", help="also check the heads in the inventory's stores"),
    ] = False,
    heads: Annotated[
        list[Path] | None,
        typer.Option("--heads", help="also check a heads file kept elsewhere (e.g. an artifact)"),
    ] = None,
) -> None:
    """Check the ledger: each row's HMAC and payload, each chain, and the chain heads published
    after each run (the copy in OPSFLOW_HOME, plus --store/--inventory-stores/--heads).
    Exit 1 when a row was changed, inserted or removed, or a chain was cut or emptied."""
    from connectors import ledger_heads
    from opsflow.inventory import BackupStore, validated
    from opsflow.ledger import Ledger, LedgerUnavailable

    for url in store or []:
        try:
            validated(BackupStore, {"url": url}, "--store")
        except InputError as exc:
            fail(EXIT_BAD_INPUT, str(exc))
    for path in heads or []:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            fail(
                EXIT_BAD_INPUT,
                f"--heads: {path} {what} (fix: name a heads file, e.g. "
                "$OPSFLOW_HOME/ledger-heads/<label>.json or the JSON of a run's ledger-heads "
                "artifact saved to a file)",
            )
    try:
        ledger = Ledger()
        published = ledger_heads.gather(ledger, store or [], inventory_stores, heads or [])
        report = ledger.verify(published)
    except LedgerUnavailable as exc:
        fail(EXIT_FAILED, str(exc))
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    problems = [str(p) for p in report.problems]
    if not published and report.rows:
        problems.append(
            "heads: no published chain heads found, so a cut tail or an emptied table would "
            "go unseen (fix: pass --store URL, --inventory-stores or --heads FILE; runs "
            "publish them when they finish)"
        )
    if not problems:
        against = ", ".join(report.heads_checked) or "no published heads (empty ledger)"
        out.print(
            f"ledger OK: {report.rows} rows, every chain intact; heads: {against}",
            markup=False,
            soft_wrap=True,
        )
        return
    for problem in problems:
        err.print(redact(problem), style="red", markup=False, soft_wrap=True)
    err.print(
        f"ledger {ledger.display_url} FAILED: {len(problems)} problem(s)",
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_FAILED)
