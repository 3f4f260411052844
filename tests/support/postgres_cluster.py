"""A throwaway PostgreSQL cluster for tests and benchmarks on machines without a server.

``initdb`` refuses to run as root, so cluster commands run as the ``postgres`` user there. The
cluster listens on 127.0.0.1 at a free port, is stopped and deleted on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import psycopg

from tests.support.net import free_port


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (initdb, pg_ctl, pg_dump, pgbench, psql)."""
    dirs = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not dirs:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(fix: run scripts/install-system-deps.sh)"
        )
    return Path(dirs[-1])


def postgres_answers(host: str, port: int) -> bool:
    """True when a PostgreSQL server accepts the ``postgres`` user at host:port."""
    try:
        with psycopg.connect(
            host=host, port=port, user="postgres", dbname="postgres", connect_timeout=3
        ) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _as_postgres_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def run_checked(argv: list[str], what: str, timeout: float = 120) -> None:
    """Run a command; raise RuntimeError with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


@contextmanager
def throwaway_cluster(
    *, hba: str | None = None, options: str = "", prefix: str = "opsflow-pg-"
) -> Iterator[int]:
    """Start a cluster (superuser ``postgres``, trust unless ``hba`` says otherwise, fsync off)
    and yield its port; stop and delete it on exit. ``options`` are extra server options."""
    bin_dir = postgres_bin_dir()
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
    data = base / "data"
    port = free_port()
    pg_ctl = str(bin_dir / "pg_ctl")
    log = base / "postgres.log"
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8"]
        run_checked(_as_postgres_user([*initdb, "-A", "trust"]), "initdb")
        if hba is not None:
            (data / "pg_hba.conf").write_text(hba)
        server_options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off {options}"
        run_checked(
            _as_postgres_user(
                [
                    pg_ctl,
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    server_options.strip(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            f"pg_ctl start (log: {log})",
        )
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            run_checked(
                _as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), "stop"
            )
        shutil.rmtree(base, ignore_errors=True)
