"""Container images for tests, built locally (no registry is reachable) and cached by tag.

* ``ensure_busybox_image`` — a ~2 MB image made of busybox-static and its applet links,
  imported with ``docker import`` in well under a second. Good for "a process that runs,
  logs, exits, restarts, answers a HEALTHCHECK".
* ``ensure_debian_image`` — ``debootstrap --variant=minbase bookworm`` imported as an image
  (~30 s the first time; Debian's mirror must be reachable).
* ``ensure_postgres_image`` — Debian + the ``postgresql`` package, built with
  ``docker build --network host`` (a few minutes the first time). The container initialises
  a cluster on first start and runs ``postgres`` in the foreground, listening on 5432 with
  ``POSTGRES_PASSWORD`` (scram) for TCP clients when set, trust otherwise; local socket
  connections (``docker exec … psql -U postgres``) are always trusted.
* ``deploy_app_image(client, version)`` — the HTTP application the deploy tests and benchmark
  replace, in versions ``v1`` … ``v4`` (``opsflow-test/deploy-app:<version>``), on a shared
  base of Debian + ``python3`` (``opsflow-test/deploy-app-base:1``, about a minute the first
  time; each version is one small layer on it, built in a second). See ``DEPLOY_APP_VERSIONS``.

Each function checks the tag first and builds only when it is missing; a file lock keeps
two test sessions from building the same image at once.
"""

from __future__ import annotations

import fcntl
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

BUSYBOX_IMAGE = "opsflow-test/busybox:1"
DEBIAN_IMAGE = "opsflow-test/debian:bookworm"
POSTGRES_IMAGE = "opsflow-test/postgres:15"
DEPLOY_APP_BASE_IMAGE = "opsflow-test/deploy-app-base:1"
DEPLOY_APP_REPOSITORY = "opsflow-test/deploy-app"
DEPLOY_APP_PORT = 8000
DEPLOY_APP_VERSIONS = {
    "v1": "healthy",
    "v2": "unhealthy",  # /health answers 500: the Docker HEALTHCHECK turns unhealthy
    "v3": "healthy",
    "v4": "errors",  # healthy, but every 3rd request to / answers 500 (a 33 % 5xx rate)
}
BUSYBOX = Path("/bin/busybox")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LOCK_DIR = Path("/tmp/opsflow-docker-test")

_POSTGRES_ENTRYPOINT = """#!/bin/sh
set -e
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    if [ -n "$POSTGRES_PASSWORD" ]; then
        printf '%s' "$POSTGRES_PASSWORD" > /tmp/pwfile && chown postgres /tmp/pwfile
        su postgres -c "$PGBIN/initdb -D $PGDATA -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --pwfile=/tmp/pwfile" >/dev/null
        rm -f /tmp/pwfile
    else
        su postgres -c "$PGBIN/initdb -D $PGDATA -U postgres --auth=trust" >/dev/null
    fi
    METHOD=trust
    [ -n "$POSTGRES_PASSWORD" ] && METHOD=scram-sha-256
    echo "host all all 0.0.0.0/0 $METHOD" >> "$PGDATA/pg_hba.conf"
    if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
        su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-c listen_addresses=' -w start" >/dev/null
        su postgres -c "$PGBIN/createdb $POSTGRES_DB"
        su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast -w stop" >/dev/null
    fi
fi
exec su postgres -c "exec $PGBIN/postgres -D $PGDATA -c listen_addresses=* $*"
"""

_POSTGRES_DOCKERFILE = f"""FROM {DEBIAN_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \\
    --no-install-recommends postgresql-15 postgresql-client-15 && \\
    rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 && \\
    mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod 755 /usr/local/bin/entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
HEALTHCHECK --interval=1s --timeout=5s --retries=60 \\
    CMD pg_isready -U postgres -h /var/run/postgresql
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
"""


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCK_DIR / f"build-{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _busybox_rootfs_tar() -> bytes:
    """A tar of /bin/busybox plus a symlink per applet, /tmp and a root passwd entry."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ensure_busybox_image(client: docker.DockerClient) -> str:
    """Import the busybox image when its tag is missing; return the tag."""
    if image_exists(client, BUSYBOX_IMAGE):
        return BUSYBOX_IMAGE
    with _build_lock("busybox"):
        if not image_exists(client, BUSYBOX_IMAGE):
            repository, tag = BUSYBOX_IMAGE.rsplit(":", 1)
            client.api.import_image_from_data(
                _busybox_rootfs_tar(),
                repository=repository,
                tag=tag,
                changes=['CMD ["/bin/sh"]', "ENV PATH=/bin"],
            )
    if not image_exists(client, BUSYBOX_IMAGE):
        raise RuntimeError(f"docker import did not create {BUSYBOX_IMAGE}")
    return BUSYBOX_IMAGE


def ensure_debian_image(client: docker.DockerClient, timeout: float = 900) -> str:
    """debootstrap a minimal bookworm and import it when its tag is missing; return the tag."""
    if image_exists(client, DEBIAN_IMAGE):
        return DEBIAN_IMAGE
    with _build_lock("debian"):
        if not image_exists(client, DEBIAN_IMAGE):
            with tempfile.TemporaryDirectory(prefix="opsflow-rootfs-") as tmp:
                rootfs = Path(tmp) / "rootfs"
                subprocess.run(
                    ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                    check=True,
                    capture_output=True,
                    timeout=timeout,
                )
                tar = subprocess.run(
                    ["tar", "-C", str(rootfs), "-c", "."],
                    check=True,
                    capture_output=True,
                    timeout=300,
                ).stdout
            repository, tag = DEBIAN_IMAGE.rsplit(":", 1)
            client.api.import_image_from_data(
                tar, repository=repository, tag=tag, changes=['CMD ["/bin/bash"]']
            )
    if not image_exists(client, DEBIAN_IMAGE):
        raise RuntimeError(f"docker import did not create {DEBIAN_IMAGE}")
    return DEBIAN_IMAGE


def ensure_postgres_image(client: docker.DockerClient) -> str:
    """Build PostgreSQL 15 on the Debian image when its tag is missing; return the tag.

    Run it with e.g. ``client.containers.run(tag, detach=True, environment={
    "POSTGRES_PASSWORD": "…", "POSTGRES_DB": "app"}, ports={"5432/tcp": ("127.0.0.1", None)})``
    and wait for ``container.attrs["State"]["Health"]["Status"] == "healthy"``.
    """
    if image_exists(client, POSTGRES_IMAGE):
        return POSTGRES_IMAGE
    ensure_debian_image(client)
    with _build_lock("postgres"):
        if not image_exists(client, POSTGRES_IMAGE):
            with tempfile.TemporaryDirectory(prefix="opsflow-pgimage-") as tmp:
                context = Path(tmp)
                (context / "Dockerfile").write_text(_POSTGRES_DOCKERFILE)
                (context / "entrypoint.sh").write_text(_POSTGRES_ENTRYPOINT)
                client.images.build(
                    path=str(context),
                    tag=POSTGRES_IMAGE,
                    network_mode="host",
                    rm=True,
                    forcerm=True,
                    timeout=900,
                )
    if not image_exists(client, POSTGRES_IMAGE):
        raise RuntimeError(f"docker build did not create {POSTGRES_IMAGE}")
    return POSTGRES_IMAGE


_DEPLOY_APP = r"""
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = open("/app/VERSION").read().strip()
MODE = open("/app/MODE").read().strip()
PORT = int(os.environ.get("APP_PORT", "8000"))
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
lock = threading.Lock()
counts = {}  # (path, status) -> requests
hist = [0] * len(BUCKETS)
total = [0, 0.0]  # count, sum of seconds
hits = [0]


def metrics():
    lines = [
        "# HELP app_version_info the version serving", "# TYPE app_version_info gauge",
        'app_version_info{version="%s"} 1' % VERSION,
        "# HELP http_requests_total requests served", "# TYPE http_requests_total counter",
    ]
    with lock:
        for (path, status), n in sorted(counts.items()):
            lines.append('http_requests_total{path="%s",status="%d"} %d' % (path, status, n))
        lines += ["# HELP http_request_duration_seconds request latency",
                  "# TYPE http_request_duration_seconds histogram"]
        for bound, n in zip(BUCKETS, hist):
            lines.append('http_request_duration_seconds_bucket{le="%s"} %d' % (bound, n))
        lines.append('http_request_duration_seconds_bucket{le="+Inf"} %d' % total[0])
        lines.append("http_request_duration_seconds_count %d" % total[0])
        lines.append("http_request_duration_seconds_sum %f" % total[1])
    return ("\n".join(lines) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        started = time.perf_counter()
        path = self.path.split("?")[0]
        kind = "text/plain; version=0.0.4"
        if path == "/health":
            status = 500 if MODE == "unhealthy" else 200
            body = json.dumps({"status": "failing" if status == 500 else "healthy",
                               "version": VERSION}).encode()
            kind = "application/json"
        elif path == "/metrics":
            status, body = 200, metrics()
        elif path == "/":
            with lock:
                hits[0] += 1
                failing = MODE == "errors" and hits[0] % 3 == 0
            status = 500 if failing else 200
            body = json.dumps({"version": VERSION, "ok": not failing}).encode()
            kind = "application/json"
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if path != "/metrics":
            elapsed = time.perf_counter() - started
            with lock:
                counts[(path, status)] = counts.get((path, status), 0) + 1
                total[0] += 1
                total[1] += elapsed
                for i, bound in enumerate(BUCKETS):
                    if elapsed <= bound:
                        hist[i] += 1


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1: no default SIGTERM action
server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
server.daemon_threads = True
print("deploy-app %s (%s) listening on %d" % (VERSION, MODE, PORT), flush=True)
server.serve_forever()
"""

_DEPLOY_APP_HEALTHCHECK = r"""
import os, sys, urllib.request
port = os.environ.get("APP_PORT", "8000")
try:
    urllib.request.urlopen("http://127.0.0.1:%s/health" % port, timeout=2)
except Exception as exc:
    print("health check failed: %s" % exc)
    sys.exit(1)
print("ok")
"""

_DEPLOY_APP_BASE_DOCKERFILE = f"""FROM {DEBIAN_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \\
    --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
COPY app.py healthcheck.py /app/
"""

_DEPLOY_APP_DOCKERFILE = f"""FROM {DEPLOY_APP_BASE_IMAGE}
COPY VERSION MODE /app/
EXPOSE {DEPLOY_APP_PORT}
HEALTHCHECK --interval=1s --timeout=3s --retries=2 CMD ["python3", "/app/healthcheck.py"]
CMD ["python3", "-u", "/app/app.py"]
"""


def _build(client: docker.DockerClient, tag: str, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="opsflow-image-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        client.images.build(
            path=tmp, tag=tag, network_mode="host", rm=True, forcerm=True, timeout=900
        )
    if not image_exists(client, tag):
        raise RuntimeError(f"docker build did not create {tag}")


def deploy_app_image(client: docker.DockerClient, version: str) -> str:
    """Build ``opsflow-test/deploy-app:<version>`` when its tag is missing; return the tag.

    One Python HTTP server on port 8000 (``APP_PORT``) serving ``/`` (JSON with the version),
    ``/health`` and Prometheus ``/metrics`` (``app_version_info{version=…}``,
    ``http_requests_total{path,status}``, the ``http_request_duration_seconds`` histogram),
    with a HEALTHCHECK every second (unhealthy after 2 failures). It exits on SIGTERM.
    ``DEPLOY_APP_VERSIONS`` says how each version behaves. The version lives in a file of the
    image, not in its environment, so a container keeps the same ``Config.Env`` across versions.
    """
    if version not in DEPLOY_APP_VERSIONS:
        raise ValueError(f"unknown deploy-app version {version!r}: {sorted(DEPLOY_APP_VERSIONS)}")
    tag = f"{DEPLOY_APP_REPOSITORY}:{version}"
    if image_exists(client, tag):
        return tag
    if not image_exists(client, DEPLOY_APP_BASE_IMAGE):
        ensure_debian_image(client)
        with _build_lock("deploy-app-base"):
            if not image_exists(client, DEPLOY_APP_BASE_IMAGE):
                _build(
                    client,
                    DEPLOY_APP_BASE_IMAGE,
                    {
                        "Dockerfile": _DEPLOY_APP_BASE_DOCKERFILE,
                        "app.py": _DEPLOY_APP,
                        "healthcheck.py": _DEPLOY_APP_HEALTHCHECK,
                    },
                )
    with _build_lock(f"deploy-app-{version}"):
        if not image_exists(client, tag):
            _build(
                client,
                tag,
                {
                    "Dockerfile": _DEPLOY_APP_DOCKERFILE,
                    "VERSION": version + "\n",
                    "MODE": DEPLOY_APP_VERSIONS[version] + "\n",
                },
            )
    return tag
