"""`opsflow up` / `make up`: the embedded default.

Starts a Prefect server (SQLite under ``.opsflow/prefect``, UI on 127.0.0.1:<port>) unless
PREFECT_API_URL points at one, then serves every deployment of prefect.yaml, with the alert
receiver beside them when OPSFLOW_RECEIVER_TOKEN is set (deployments/receiver.py). Ctrl-C
stops the runner first (it pauses its deployments on exit and needs the server for that), then
the receiver and the server.

The *home server*: when no server is configured, `opsflow run` starts one Prefect server per
``OPSFLOW_HOME`` (SQLite in ``<home>/prefect-home``, a free port) and leaves it running for the
next commands, instead of Prefect's ephemeral server that every process would start and
migrate again. ``<home>/prefect-home/server.json`` says where it is; `opsflow down` stops it.

A new server's SQLite database starts as a copy of an empty, migrated one that `make install`
prepares once per Prefect version (``make_db_template``): migrating a new database costs ~4 s
of the first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from opsflow.errors import InputError
from opsflow.redaction import redact
from opsflow.settings import get_settings

STARTUP_SECONDS = 120
HEALTH_POLL_SECONDS = 0.1


def db_template() -> Path:
    """Where the empty, migrated Prefect database of this environment's Prefect version is."""
    return Path(sys.prefix) / "share" / "opsflow" / f"prefect-{version('prefect')}.db"


def make_db_template() -> Path:
    """Create ``db_template()`` unless it exists: an empty database a server started once on
    (Prefect's migrations ran and its block types are registered); `make install` calls this."""
    template = db_template()
    if template.exists():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        stop_process_group(start_embedded_server(Path(tmp), _free_port(), Console(quiet=True)))
        database = Path(tmp) / "prefect.db"
        with contextlib.closing(sqlite3.connect(database)) as db:  # one file: no WAL left
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        database.rename(template)
    return template


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_embedded_server(
    home: Path, port: int, console: Console, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` with SQLite in ``home``; return once /api/health answers.

    Used by `opsflow up`, by the test fixtures and by the benchmarks (one way to start it)."""
    return launch_embedded_server(home, port, console, extra_env).wait(console)


@dataclass
class Launch:
    """A Prefect server process that is starting."""

    proc: subprocess.Popen[bytes]
    api: str
    log_path: Path

    def wait(self, console: Console) -> subprocess.Popen[bytes]:
        """The process, once /api/health answers (stopped, and RuntimeError, if it does not)."""
        deadline = time.monotonic() + STARTUP_SECONDS
        with console.status("waiting for the Prefect server to answer..."):
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _healthy(self.api):
                    return self.proc
                time.sleep(HEALTH_POLL_SECONDS)
        stop_process_group(self.proc)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the Prefect server did not start; see {self.log_path}:\n{tail}")


def launch_embedded_server(
    home: Path, port: int, console: Console, extra_env: dict[str, str] | None = None
) -> Launch:
    """Start ``prefect server start`` with SQLite in ``home`` and return without waiting."""
    home.mkdir(parents=True, exist_ok=True)
    database = home / "prefect.db"
    template = db_template()
    copied = not database.exists() and template.exists()
    if copied:
        shutil.copyfile(template, database)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database.resolve()}",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        # the template's block types are registered already (the next start registers anew)
        **({"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"} if copied else {}),
        **(extra_env or {}),
    }
    log_path = home / "server.log"
    console.print(f"starting Prefect server on 127.0.0.1:{port} (log: {log_path})")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Launch(proc, f"http://127.0.0.1:{port}/api", log_path)


def drain_prefect_workers(timeout: float = 15) -> None:
    """Send the logs and events this process still holds to the server; call before stopping
    it (otherwise they are retried against a dead server when the interpreter exits)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """Stop a process started in its own session (``start_new_session=True``) and its children:
    SIGINT twice (Prefect runners and workers need two), then SIGTERM, then SIGKILL, waiting up
    to ``timeout`` seconds after each. The one way opsflow, its tests and its benchmarks stop a
    server, a runner or a worker."""

    def ended(wait: float) -> bool:
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    _stop_group(proc.pid, lambda: proc.poll() is not None, ended, timeout)


def _stop_group(
    pid: int, gone: Callable[[], bool], ended: Callable[[float], bool], timeout: float
) -> None:
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if gone():
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if ended(timeout):
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child that nobody waited for) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _stop_pid_group(pid: int, timeout: float = 15) -> None:
    """``stop_process_group`` for a process this one did not start (known by its pid)."""

    def ended(wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return False

    _stop_group(pid, lambda: not _pid_alive(pid), ended, timeout)


# ----- the home server ---------------------------------------------------------------------


def home_server_dir(home: Path) -> Path:
    return (home / "prefect-home").resolve()


def _home_server_record(home: Path) -> tuple[int, str] | None:
    """(pid, API URL) that ``server.json`` of ``home`` records, if any."""
    try:
        found = json.loads((home_server_dir(home) / "server.json").read_text())
        return int(found["pid"]), str(found["api"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_home_server(home: Path) -> str | None:
    """The API URL of ``home``'s server if it runs and answers, else None."""
    record = _home_server_record(home)
    if record is None:
        return None
    pid, api = record
    return api if _pid_alive(pid) and _healthy(api) else None


@dataclass
class HomeServerStart:
    """``home``'s server on its way up: ``begin`` starts it if it does not run (without waiting;
    ``api`` is known at once), ``ready`` waits for it and records it, ``abandon`` stops it again
    and removes what it made.

    A file lock, held from ``begin`` to ``ready``/``abandon``, makes concurrent commands share
    one server. `opsflow run` begins before it checks the runbook's parameters, so the server
    comes up while the runbook is imported, and abandons on bad input."""

    home: Path
    api: str
    lock: Any
    launch: Launch | None
    created: bool

    @classmethod
    def begin(cls, home: Path) -> HomeServerStart:
        directory = home_server_dir(home)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        lock = (directory / "server.lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        api = running_home_server(home)
        if api is not None:
            return cls(home, api, lock, None, created)
        launch = launch_embedded_server(directory, _free_port(), Console(quiet=True))
        return cls(home, launch.api, lock, launch, created)

    def ready(self, console: Console) -> str:
        """The API URL, once the server answers (a new one is recorded in ``server.json``)."""
        try:
            if self.launch is not None:
                proc = self.launch.wait(console)
                directory = home_server_dir(self.home)
                tmp = directory / "server.json.tmp"
                tmp.write_text(json.dumps({"pid": proc.pid, "api": self.api}))
                tmp.rename(directory / "server.json")
            return self.api
        finally:
            self.lock.close()

    def abandon(self) -> None:
        """Stop a server this start launched and remove its directory if this start made it."""
        try:
            if self.launch is not None:
                stop_process_group(self.launch.proc)
                if self.created:
                    shutil.rmtree(home_server_dir(self.home), ignore_errors=True)
        finally:
            self.lock.close()


def stop_home_server(home: Path) -> str | None:
    """Stop ``home``'s server; its API URL, or None when none ran."""
    record = _home_server_record(home)
    if record is None:
        return None
    pid, api = record
    running = _pid_alive(pid)
    if running:
        _stop_pid_group(pid)
    (home_server_dir(home) / "server.json").unlink(missing_ok=True)
    return api if running else None


def run_up(port: int, console: Console) -> int:
    settings = get_settings()
    proc: subprocess.Popen[bytes] | None = None
    api = os.environ.get("PREFECT_API_URL")
    if api:
        console.print(f"using the Prefect server at {api} (PREFECT_API_URL)")
        if not _healthy(api):
            console.print(f"[red]error:[/] {api} does not answer /health")
            return 2
    else:
        api = f"http://127.0.0.1:{port}/api"
        if _healthy(api):
            console.print(f"a Prefect server already answers at {api}; using it")
        else:
            proc = start_embedded_server(settings.home / "prefect", port, console)
        os.environ["PREFECT_API_URL"] = api
    # how soon the log lines of a served run reach `opsflow run` following it (the run's
    # process sends them in batches); how soon a run starts is OPSFLOW_RUNNER_POLL_SECONDS
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    ui = api.removesuffix("/api")
    console.print(
        f"[bold green]opsflow is up.[/] Prefect UI: [link={ui}]{ui}[/link]  (Ctrl-C to stop)"
    )
    receiver: Any = None
    try:
        from deployments.receiver import start_for_up
        from deployments.serve import serve_all

        receiver = start_for_up(console)  # None: no token, or its port is taken
        serve_all()
    except InputError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return 2
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        if receiver is not None:
            receiver.stop()
        if proc is not None:
            stop_process_group(proc)
            console.print("Prefect server stopped")
    return 0
