"""`opsflow up` / `make up`: the embedded default.

Starts a Prefect server (SQLite under ``.opsflow/prefect``, UI on 127.0.0.1:<port>) unless
PREFECT_API_URL points at one, then serves every deployment of prefect.yaml. Ctrl-C stops the
runner first (it pauses its deployments on exit and needs the server for that), then the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from opsflow.errors import InputError
from opsflow.redaction import redact
from opsflow.settings import get_settings

STARTUP_SECONDS = 120


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
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home.resolve()}/prefect.db",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
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
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + STARTUP_SECONDS
    with console.status("waiting for the Prefect server to answer..."):
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(api):
                return proc
            time.sleep(0.5)
    stop_process_group(proc)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the Prefect server did not start; see {log_path}:\n{tail}")


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
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue


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
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    ui = api.removesuffix("/api")
    console.print(
        f"[bold green]opsflow is up.[/] Prefect UI: [link={ui}]{ui}[/link]  (Ctrl-C to stop)"
    )
    try:
        from deployments.serve import serve_all

        serve_all()
    except InputError as exc:
        console.print(f"[red]error:[/] {redact(str(exc))}")
        return 2
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        if proc is not None:
            stop_process_group(proc)
            console.print("Prefect server stopped")
    return 0
