"""The second wall behind verification: whatever SQL stream reaches psql in a restore runs in
psql's restricted mode, so backslash commands (a shell escape, switching databases) are refused
and the transaction rolls back; a pg_dump >= 15.14 dump with its own \\restrict pair restores.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from connectors.postgres import admin, postgres_for
from opsflow.errors import PermanentError
from opsflow.inventory import Database
from tests.fixtures.restores import RESTORE_DSN_VAR, RestoreLab

pytestmark = pytest.mark.integration


def lab_database() -> Database:
    return Database(name="main", kind="postgres", dsn=f"env:{RESTORE_DSN_VAR}")


def test_a_shell_escape_in_the_stream_is_refused_and_rolls_back(
    restore_lab: RestoreLab, tmp_path: Path
) -> None:
    lab = restore_lab
    pwned = tmp_path / "pwned.txt"
    scratch = f"{lab.dbname}_restricted"
    stream = [
        b"create table before_escape (x int);\n",
        f"\\! touch {pwned}\n".encode(),
        f"\\connect {lab.dbname}\n".encode(),
        b"create table after_escape (x int);\n",
    ]
    with postgres_for(lab_database(), "database") as pg:
        admin.create(pg, scratch, "")
        try:
            with pytest.raises(PermanentError) as caught:
                pg.feed(scratch, stream, 60)
            tables = lab.execute(
                "select count(*) from pg_tables where tablename like '%escape'", scratch
            )
        finally:
            admin.drop(pg, scratch)
    assert "backslash commands are restricted" in str(caught.value)
    assert not pwned.exists()
    assert tables == [(0,)]  # the single transaction rolled back: nothing was created
    live = lab.execute("select to_regclass('public.after_escape')::text")
    assert live == [(None,)]  # nothing reached the live database either


def test_a_dump_with_its_own_restrict_pair_restores(restore_lab: RestoreLab) -> None:
    lab = restore_lab
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", lab.env[RESTORE_DSN_VAR]],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert dump.count(b"\n\\restrict ") == 1 and dump.count(b"\n\\unrestrict ") == 1
    copy = f"{lab.dbname}_copy"
    with postgres_for(lab_database(), "database") as pg:
        admin.create(pg, copy, "")
        try:
            pg.feed(copy, [dump], 300)
            restored = lab.checksums(copy)
        finally:
            admin.drop(pg, copy)
    assert restored == lab.checksums()
