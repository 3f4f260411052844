"""PostgreSQL backup, restore and DR drill through ``via: kubectl_exec``, over the mock
Kubernetes API server's exec websocket (real HTTP, the official client, v5.channel.k8s.io).

The API server's exec handler is a thin fake kubelet (``LocalKubelet``): for a Ready pod of
the deployment it runs the requested argv (pg_dump / psql from the installed PostgreSQL) as
a LOCAL process against the test PostgreSQL server (PGHOST/PGPORT/PGUSER point at it: "the
container" is this machine) and streams its stdout/stderr and exit code back as frames.

What this proves: our exec client streams (first chunk before the command ended, one frame at
a time), feeds stdin and signals its end (v5 close), reads exit codes from the error channel,
maps failures and timeouts; the flows find the pod, never put the password on argv, store
nothing on a failed or killed dump, and restore the backed-up data exactly. What it does NOT
prove: a real kubelet / container runtime (CRI streaming, SPDY, process kill on disconnect),
a container's own filesystem, users and local-socket authentication, RBAC on pods/exec.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connectors.kubernetes import find_pod, kube_api
from connectors.stores import open_store
from connectors.stores.base import manifest_key
from connectors.streams import decompress
from connectors.transports import PodExec
from flows.backup import BackupReport, backup
from flows.dr_drill import dr_drill
from flows.restore import restore
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore, KubernetesTarget
from opsflow.results import RestoreReport
from tests.fixtures.kube_api import ExecCall, KubeApiServer, KubeCluster
from tests.fixtures.restores import RESTORE_DSN_VAR, RestoreLab

pytestmark = pytest.mark.integration

DB_PASSWORD = "kube-exec-pw-5f1c9e"  # in the DSN only: must never reach argv or any output
CLIENT_BINARIES = ("pg_dump", "psql", "pg_amcheck")


@dataclass
class LocalKubelet:
    """Exec handler: run the argv locally against the test PostgreSQL, stream it back."""

    bin_dir: Path
    host: str
    port: int
    user: str
    pods: set[str]
    calls: list[tuple[str, str | None, list[str]]] = field(default_factory=list)
    kill_dump_after: int | None = None  # SIGKILL the next pg_dump after this many bytes

    def __call__(self, call: ExecCall) -> int:
        self.calls.append((call.pod, call.container, list(call.argv)))
        if call.pod not in self.pods:
            raise RuntimeError(f"pod {call.pod} is not a Ready database pod")
        if call.argv[0] not in CLIENT_BINARIES:
            call.write_stderr(f"exec: {call.argv[0]!r}: executable file not found\n".encode())
            return 127
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "OPSFLOW_HOME"
        }
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user)
        proc = subprocess.Popen(
            [str(self.bin_dir / call.argv[0]), *call.argv[1:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        kill_after = self.kill_dump_after if call.argv[0] == "pg_dump" else None
        if kill_after is not None:
            self.kill_dump_after = None

        def feed() -> None:
            assert proc.stdin is not None
            try:
                for chunk in call.stdin:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                return  # the process stopped reading: its exit code says why

        def errors() -> None:
            assert proc.stderr is not None
            while data := proc.stderr.read1(65536):
                call.write_stderr(data)

        def watch() -> None:  # the client went away: stop the process, as a runtime would
            while proc.poll() is None:
                if call.disconnected.wait(0.2) and proc.poll() is None:
                    proc.kill()

        helpers = [threading.Thread(target=t, daemon=True) for t in (feed, errors, watch)]
        for helper in helpers:
            helper.start()
        sent = 0
        while data := proc.stdout.read1(65536):
            call.write_stdout(data)
            sent += len(data)
            if kill_after is not None and sent >= kill_after:
                proc.kill()
        code = proc.wait()
        for helper in helpers:
            helper.join(timeout=10)
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as in a shell


@pytest.fixture
def local_kubelet(
    kube_cluster: KubeCluster, kube_api_server: KubeApiServer, restore_lab: RestoreLab
) -> Iterator[LocalKubelet]:
    ready = {kube_cluster.pods["ready-1"], kube_cluster.pods["ready-2"]}
    server = restore_lab.server
    kubelet = LocalKubelet(server.bin_dir, server.host, server.port, server.superuser, ready)
    kube_api_server.set_exec_stream_handler(kubelet)
    try:
        yield kubelet
    finally:
        kube_api_server.set_exec_stream_handler(None)


def write_kube_inventory(lab: RestoreLab, cluster: KubeCluster, monkeypatch: Any) -> None:
    # the host is never resolved: everything runs in "the pod" over its local connection
    monkeypatch.setenv(
        RESTORE_DSN_VAR, f"postgresql://postgres:{DB_PASSWORD}@postgres.db.svc/{lab.dbname}"
    )
    (lab.root / "inventory.yaml").write_text(f"""
environments:
  kube:
    kubernetes: {{namespace: {cluster.namespace}, api_url: "{cluster.url}"}}
    databases:
      - name: main
        kind: postgres
        dsn: "env:{RESTORE_DSN_VAR}"
        via: {{kubectl_exec: {cluster.deployment}, container: postgres}}
    backup_store: {{url: "file://{lab.store_dir}"}}
""")


def run_backup() -> tuple[Any, BackupReport]:
    state = backup(env="kube", requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport), f"flow ended {state.name}: {report!r}"
    return state, report


def stored_files(lab: RestoreLab) -> list[str]:
    """What the store holds besides the ledger's published chain heads (``_ledger/``)."""
    if not lab.store_dir.exists():
        return []
    paths = (p.relative_to(lab.store_dir) for p in lab.store_dir.rglob("*"))
    return sorted(str(p) for p in paths if p.parts[0] != "_ledger")


def test_backup_restore_and_drill_through_kubectl_exec(
    restore_lab: RestoreLab,
    kube_cluster: KubeCluster,
    local_kubelet: LocalKubelet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = restore_lab
    write_kube_inventory(lab, kube_cluster, monkeypatch)
    backed_up = lab.checksums()

    state, report = run_backup()

    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="kube", database="main")
    assert row.status == "complete" and row.key.endswith(".sql.zst")
    path = lab.store_dir / row.key
    manifest = json.loads((lab.store_dir / manifest_key(row.key)).read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256 == manifest["sha256"]
    assert manifest["via"] == "kubectl_exec" and report.backups[0].via.startswith("kubectl_exec")
    assert manifest["row_counts"]["public.pgbench_accounts"] == 100_000
    dump = b"".join(
        decompress(
            open_store(BackupStore(url=f"file://{lab.store_dir}")).get_stream(row.key), "zstd"
        )
    )
    assert (
        b"CREATE TABLE public.pgbench_accounts" in dump and b"COPY public.pgbench_accounts" in dump
    )
    # it ran in a Ready pod of the deployment, in the named container, as pg_dump -U user -d db
    dumps = [c for c in local_kubelet.calls if c[2][0] == "pg_dump"]
    assert len(dumps) == 1
    pod, container, argv = dumps[0]
    assert pod in local_kubelet.pods and container == "postgres"
    assert argv[-4:] == ["-U", "postgres", "-d", lab.dbname]

    lab.change_data()
    changed = lab.checksums()
    assert changed != backed_up

    state = restore(env="kube", requested_by="tester", return_state=True)
    restored = state.result(raise_on_failure=False)
    assert isinstance(restored, RestoreReport), f"flow ended {state.name}: {restored!r}"
    assert state.is_completed(), state.message
    assert lab.checksums() == backed_up  # every table is back to the backed-up state
    [outcome] = restored.databases
    assert outcome.status == "restored" and outcome.backup_id == row.backup_id
    assert lab.checksums(outcome.aside) == changed  # the replaced data is kept aside
    feeds = [c for c in local_kubelet.calls if "--single-transaction" in c[2]]
    assert len(feeds) == 1 and feeds[0][2][0] == "psql"

    state = dr_drill(env="kube", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    [drill] = lab.ledger().drills(env="kube")
    assert drill.outcome == "passed" and drill.rto_seconds > 0
    assert not [d for d in lab.databases() if "_drill_" in d or "_restore_" in d]

    # the password went nowhere near the pod: not on any argv
    assert local_kubelet.calls and all(
        DB_PASSWORD not in " ".join(c[2]) for c in local_kubelet.calls
    )


def test_a_failing_or_killed_dump_in_the_pod_leaves_nothing(
    restore_lab: RestoreLab,
    kube_cluster: KubeCluster,
    local_kubelet: LocalKubelet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = restore_lab
    write_kube_inventory(lab, kube_cluster, monkeypatch)
    first, _ = run_backup()
    assert first.is_completed(), first.message
    [previous] = lab.ledger().backups(env="kube", database="main")
    previous_sha = hashlib.sha256((lab.store_dir / previous.key).read_bytes()).hexdigest()
    before = stored_files(lab)

    # pg_dump killed in the pod after 1 MB went out: the stream ends with exit 137
    local_kubelet.kill_dump_after = 1 << 20
    state, report = run_backup()
    assert state.is_failed()
    [outcome] = report.backups
    assert outcome.status == "failed" and "exited with code 137" in (outcome.error or "")
    assert local_kubelet.kill_dump_after is None  # the kill really happened in the pod
    assert stored_files(lab) == before
    assert [r.backup_id for r in lab.ledger().backups(env="kube", database="main")] == [
        previous.backup_id
    ]

    # the same entry now names a database that does not exist in the pod's server
    monkeypatch.setenv(
        RESTORE_DSN_VAR, f"postgresql://postgres:{DB_PASSWORD}@postgres.db.svc/opsflow_no_such_db"
    )
    state, report = run_backup()
    assert state.is_failed()
    [outcome] = report.backups
    assert outcome.status == "failed" and "does not exist" in (outcome.error or "")
    assert DB_PASSWORD not in (outcome.error or "")
    assert stored_files(lab) == before
    assert [r.backup_id for r in lab.ledger().backups(env="kube", database="main")] == [
        previous.backup_id
    ]
    assert hashlib.sha256((lab.store_dir / previous.key).read_bytes()).hexdigest() == previous_sha


# --- the exec client itself ---------------------------------------------------------------------


def _target(cluster: KubeCluster) -> KubernetesTarget:
    return KubernetesTarget(namespace=cluster.namespace, api_url=cluster.url)


def _api(cluster: KubeCluster) -> Any:
    return kube_api(_target(cluster))


def test_pod_exec_stream_yields_before_the_command_ends_and_maps_failures(
    kube_cluster: KubeCluster, kube_api_server: KubeApiServer
) -> None:
    first_seen = threading.Event()

    def kubelet(call: ExecCall) -> int:
        if call.argv[0] == "stream":
            call.write_stdout(b"first chunk\n")
            if not first_seen.wait(10):  # the client has it while the command still runs
                return 99
            for i in range(200):
                call.write_stdout(b"%05d" % i * 200)
            return 0
        if call.argv[0] == "fail":
            call.write_stdout(b"partial")
            call.write_stderr(b"x" * 10_000 + b"\npg_dump: error: password=hunter2-secret bad\n")
            return 3
        time.sleep(5)  # "silent": no output at all
        return 0

    kube_api_server.set_exec_stream_handler(kubelet)
    try:
        with _api(kube_cluster) as api:
            ns = kube_cluster.namespace
            pod = find_pod(api, ns, kube_cluster.deployment)
            in_pod = PodExec(_target(kube_cluster), pod, api=api)
            chunks = PodExec(_target(kube_cluster), pod, "db", api=api).stream_out(["stream"], 60)
            assert next(chunks) == b"first chunk\n"
            first_seen.set()
            rest = b"".join(chunks)
            assert rest == b"".join(b"%05d" % i * 200 for i in range(200))

            got: list[bytes] = []
            with pytest.raises(PermanentError, match="exited with code 3") as failed:
                got.extend(in_pod.stream_out(["fail"], 60))
            assert got == [b"partial"]
            message = str(failed.value)
            assert "bad" in message and "hunter2-secret" not in message and len(message) < 1200

            with pytest.raises(TransientError, match="no output"):
                list(in_pod.stream_out(["silent"], 60, idle_timeout=1))
    finally:
        kube_api_server.set_exec_stream_handler(None)


def test_pod_exec_feed_streams_stdin_and_signals_its_end(
    kube_cluster: KubeCluster, kube_api_server: KubeApiServer
) -> None:
    def kubelet(call: ExecCall) -> int:
        digest, size = hashlib.sha256(), 0
        for chunk in call.stdin:  # ends only when the client closes stdin (v5)
            digest.update(chunk)
            size += len(chunk)
        call.write_stdout(f"{size} {digest.hexdigest()}".encode())
        call.write_stderr(b"done\n")
        return 0 if size else 4

    chunks = [os.urandom(64 * 1024) for _ in range(64)]  # 4 MiB, more than any buffer
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    kube_api_server.set_exec_stream_handler(kubelet)
    try:
        with _api(kube_cluster) as api:
            ns = kube_cluster.namespace
            pod = find_pod(api, ns, kube_cluster.deployment)
            in_pod = PodExec(_target(kube_cluster), pod, api=api)
            code, out, err = in_pod.feed_in(["sink"], iter(chunks), timeout=60)
            assert (code, out, err) == (0, f"{4 << 20} {expected}".encode(), b"done\n")
            code, out, _ = in_pod.feed_in(["sink"], iter([]), timeout=60)
            assert (code, out) == (4, f"0 {hashlib.sha256().hexdigest()}".encode())

            def broken() -> Iterator[bytes]:
                yield b"some input"
                raise PermanentError("the backup's sha256 did not match")

            with pytest.raises(PermanentError, match="sha256 did not match"):
                in_pod.feed_in(["sink"], broken(), timeout=60)
    finally:
        kube_api_server.set_exec_stream_handler(None)
