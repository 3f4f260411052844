"""The security review's package checks on real parts: an OSV directory and an OSV document
served over HTTP (written here, in osv.dev's format), a requirements file and a
package-lock.json, and a running Debian bookworm container (the deploy-app image, with
python3) on the test Docker engine — also reached as a pod through the Kubernetes mock API,
whose exec is answered by ``docker exec`` in that container.

The Debian advisory is written after reading the container's own glibc version (so it is in
range whatever bookworm point release the image has); the Python package inside the image is a
distribution's metadata written into its site-packages (nothing is pip-installed)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from opsflow.errors import PermanentError
from opsflow.inventory import Environment
from opsflow.inventory.security import AdvisorySource, ImageScan, NpmLock, PythonEnvironment
from opsflow.osv import AdvisoryIndex
from opsflow.security import CheckOutcome, Severity
from tasks.security.advisories import load_advisories
from tasks.security.dependencies import check_npm_packages, check_python_packages
from tasks.security.images import check_image
from tests.fixtures.docker_engine import SESSION_ID, SESSION_LABEL
from tests.fixtures.kube_api import KubeCluster
from tests.support.images import deploy_app_image
from tests.support.osv_records import REQUESTS, URLLIB3, record

pytestmark = pytest.mark.integration
SITE = "/usr/local/lib/python3.11/dist-packages"
TOKEN = "osv-mirror-token-5b1f"


OLDPKG = record(
    "PYSEC-0000-1",
    "PyPI",
    "opsflow-oldpkg",
    [{"introduced": "0"}, {"fixed": "1.5"}],
    database_specific={"severity": "CRITICAL"},
)
LODASH = record(
    "GHSA-35jh-r3h4-6jhm",
    "npm",
    "lodash",
    [{"introduced": "0"}, {"fixed": "4.17.21"}],
    aliases=["CVE-2021-23337"],
    database_specific={"severity": "HIGH"},
)
MINIMIST = record(
    "GHSA-vh95-rmgr-6w4m", "npm", "minimist", [{"introduced": "0"}, {"fixed": "0.2.1"}]
)


def write_osv(root: Path, glibc: str = "2.36-9+deb12u99") -> Path:
    """An OSV directory as osv.dev's exports unpack (one record a file), plus a list file."""
    for ecosystem, records in (("PyPI", [REQUESTS, URLLIB3, OLDPKG]), ("npm", [LODASH])):
        (root / ecosystem).mkdir(parents=True, exist_ok=True)
        for rec in records:
            (root / ecosystem / f"{rec['id']}.json").write_text(json.dumps(rec))
    (root / "npm" / "more.json").write_text(json.dumps({"vulns": [MINIMIST]}))
    debian = [
        record("DSA-0000-1", "Debian:12", "glibc", [{"introduced": "0"}, {"fixed": glibc}]),
        record("DSA-0000-2", "Debian:12", "bash", [{"introduced": "0"}, {"fixed": "5.0-1"}]),
        record("DSA-0000-3", "Debian:11", "glibc", [{"introduced": "0"}, {"fixed": "9.0-1"}]),
        record("DSA-0000-4", "Debian:12", "libc6", [{"introduced": "0"}, {"fixed": "9.0-1"}]),
    ]
    (root / "Debian").mkdir(parents=True, exist_ok=True)
    (root / "Debian" / "all.json").write_text(json.dumps(debian))
    return root


def load(root: Path) -> AdvisoryIndex:
    return load_advisories.fn(AdvisorySource(path=str(root)))


@pytest.fixture(scope="module")
def app(docker_engine: str) -> Iterator[Container]:
    """A running deploy-app container (Debian 12 + python3) with one old Python
    distribution's metadata in its site-packages."""
    client = docker.DockerClient(base_url=docker_engine, timeout=120)
    image = deploy_app_image(client, "v1")
    container = client.containers.run(
        image,
        ["sleep", "infinity"],
        detach=True,
        name=f"opsflow-osv-{uuid.uuid4().hex[:8]}",
        labels={SESSION_LABEL: SESSION_ID},
    )
    meta = f"{SITE}/opsflow_oldpkg-1.0.dist-info"
    script = f"mkdir -p {meta} && printf 'Metadata-Version: 2.1\\nName: opsflow-oldpkg\\n"
    script += f"Version: 1.0\\n' > {meta}/METADATA"
    assert container.exec_run(["sh", "-c", script]).exit_code == 0
    yield container
    container.remove(force=True)
    client.close()


def glibc_version(container: Container) -> str:
    done = container.exec_run(
        ["dpkg-query", "-W", "-f=${source:Package} ${source:Version}", "libc6"]
    )
    source, version = done.output.decode().split()
    assert source == "glibc"  # libc6 is built from source package glibc
    return version


def finding_targets(outcome: CheckOutcome) -> dict[str, Severity]:
    return {f.target: f.severity for f in outcome.findings}


def test_requirements_file_vulnerable_and_safe_pins(tmp_path: Path) -> None:
    index = load(write_osv(tmp_path / "osv"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# pip-compile output\n-r base.txt\nrequests==2.25.0 \\\n    --hash=sha256:abc\n"
        "urllib3==1.26.18\nidna==3.4\nloose>=1.0\n"
    )
    python = PythonEnvironment(name="api", requirements=str(requirements))

    outcome = check_python_packages.fn("dev", Environment(), python, index)

    assert outcome.usable and outcome.target == "python api"
    by_target = {f.target: f for f in outcome.findings}
    assert set(by_target) == {"python api: requests 2.25.0", "python api"}
    req = by_target["python api: requests 2.25.0"]
    assert req.severity is Severity.MEDIUM  # GHSA's MODERATE
    assert "GHSA-j8r2-6x86-q33q (CVE-2023-32681)" in req.summary
    assert "upgrade to 2.31.0 or later" in req.summary
    assert req.details["fixed"] == {"GHSA-j8r2-6x86-q33q": "2.31.0"}
    loose = by_target["python api"]  # urllib3 1.26.18 is outside its advisory's range
    assert loose.severity is Severity.MEDIUM and "without a pinned version" in loose.summary
    assert "loose>=1.0" in loose.summary
    assert "3 package(s) from" in outcome.summary and "1 vulnerable" in outcome.summary
    assert "not followed: base.txt" in outcome.summary


def test_package_lock_vulnerable_and_safe(tmp_path: Path) -> None:
    index = load(write_osv(tmp_path / "osv"))
    lock = tmp_path / "package-lock.json"
    lock.write_text(
        json.dumps(
            {
                "name": "web",
                "lockfileVersion": 3,
                "packages": {
                    "": {"name": "web", "version": "1.0.0"},
                    "node_modules/lodash": {"version": "4.17.20"},
                    "node_modules/minimist": {"version": "1.2.8"},
                    "node_modules/x/node_modules/lodash": {"version": "4.17.21"},
                },
            }
        )
    )

    outcome = check_npm_packages.fn("dev", NpmLock(name="web", lock=str(lock)), index)

    assert outcome.usable
    assert finding_targets(outcome) == {"npm web: lodash 4.17.20": Severity.HIGH}
    assert "GHSA-35jh-r3h4-6jhm" in outcome.findings[0].summary
    assert "3 package(s)" in outcome.summary


def test_missing_lock_and_requirements_are_unusable(tmp_path: Path) -> None:
    index = load(write_osv(tmp_path / "osv"))
    missing = tmp_path / "nowhere" / "package-lock.json"

    npm = check_npm_packages.fn("dev", NpmLock(name="web", lock=str(missing)), index)
    python = check_python_packages.fn(
        "dev", Environment(), PythonEnvironment(name="api", requirements=str(missing)), index
    )

    for outcome in (npm, python):
        assert not outcome.usable
        (finding,) = outcome.findings
        assert finding.severity is Severity.HIGH
        assert f"{missing} does not exist" in finding.summary and "fix:" in finding.summary


def test_unparseable_sources_name_the_file(tmp_path: Path) -> None:
    root = write_osv(tmp_path / "osv")
    broken = root / "PyPI" / "GHSA-broken.json"
    broken.write_text('{"id": "GHSA-broken", "affected": [')
    with pytest.raises(PermanentError, match=rf"advisory source unusable: {broken}: is not JSON"):
        load(root)

    broken.write_text(json.dumps(record("GHSA-bad", "PyPI", "x", [{"fixed": "1.0"}])))
    with pytest.raises(PermanentError, match=r"GHSA-broken.json \(GHSA-bad\): affected\[0\]"):
        load(root)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PermanentError, match=r"holds no \*\.json file"):
        load(empty)
    with pytest.raises(PermanentError, match="is not a directory"):
        load(tmp_path / "absent")


class _Mirror(BaseHTTPRequestHandler):
    body = b""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
        body = self.body if ok and self.path == "/osv.json" else b'{"error": "no"}'
        self.send_response(200 if ok and self.path == "/osv.json" else 401 if not ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def mirror() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_source_with_a_header_reference(mirror: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSV_MIRROR_TOKEN", TOKEN)
    _Mirror.body = json.dumps({"vulns": [REQUESTS, LODASH]}).encode()
    headers = {"Authorization": "env:OSV_MIRROR_TOKEN"}
    source = AdvisorySource(url=f"{mirror}/osv.json", headers=headers)
    with pytest.raises(PermanentError, match="answered HTTP 401"):  # "Bearer" is missing
        load_advisories.fn(source)

    monkeypatch.setenv("OSV_MIRROR_TOKEN", f"Bearer {TOKEN}")
    index = load_advisories.fn(source)

    assert len(index) == 2 and index.covers("PyPI") and index.covers("npm")
    assert [a.id for a in index.matches("npm", "lodash", "4.17.0")] == ["GHSA-35jh-r3h4-6jhm"]
    with pytest.raises(PermanentError, match=r"/nothing\.json: answered HTTP 404"):
        load_advisories.fn(AdvisorySource(url=f"{mirror}/nothing.json", headers=headers))
    _Mirror.body = b"[]"
    with pytest.raises(PermanentError, match="holds no OSV record"):
        load_advisories.fn(source)


def test_image_packages_from_dpkg_and_python_and_its_age(
    tmp_path: Path, docker_engine: str, app: Container
) -> None:
    glibc = glibc_version(app)
    index = load(write_osv(tmp_path / "osv", glibc=glibc + "+1"))  # just after the installed
    env = Environment.model_validate({"docker": {"host": docker_engine}})
    scan = ImageScan(container=app.name, max_age=timedelta(seconds=1))

    outcome = check_image.fn("dev", env, scan, index)

    assert outcome.usable, outcome.summary
    label = f"container {app.name}"
    targets = finding_targets(outcome)
    assert targets[f"{label}: glibc {glibc}"] is Severity.HIGH  # no severity given: high
    assert targets[f"{label}: opsflow-oldpkg 1.0"] is Severity.CRITICAL
    assert not any(": bash " in t or ": libc6 " in t for t in targets)  # safe; binary name
    (deb,) = [f for f in outcome.findings if ": glibc " in f.target]
    assert deb.details["advisories"] == ["DSA-0000-1"]  # not the Debian 11 one
    assert "libc6" in deb.details["binaries"] and deb.details["ecosystem"] == "Debian:12"
    assert f"fixed in {glibc}+1" in deb.summary
    (age,) = [f for f in outcome.findings if "image" in f.target]
    assert age.severity is Severity.MEDIUM and "over max_age 1.0s" in age.summary
    assert "Debian:12 source package(s)" in outcome.summary
    assert "1 Python package(s)" in outcome.summary and "2 vulnerable" in outcome.summary

    fresh = check_image.fn("dev", env, ImageScan(container=app.name), index)
    assert not any("image" in f.target for f in fresh.findings)  # within 90 days


def test_python_packages_of_a_container(tmp_path: Path, docker_engine: str, app: Container) -> None:
    index = load(write_osv(tmp_path / "osv"))
    env = Environment.model_validate({"docker": {"host": docker_engine}})

    outcome = check_python_packages.fn(
        "dev", env, PythonEnvironment(name="jobs", container=app.name), index
    )
    assert finding_targets(outcome) == {"python jobs: opsflow-oldpkg 1.0": Severity.CRITICAL}
    assert f"container {app.name} (python3)" in outcome.summary

    no_python = check_python_packages.fn(
        "dev", env, PythonEnvironment(name="jobs", container=app.name, python="python9"), index
    )
    assert not no_python.usable and "python9 was not found" in no_python.summary


def test_missing_container_and_an_image_without_dpkg(
    tmp_path: Path, docker_engine: str, docker_busybox_image: str, docker_test_containers: Any
) -> None:
    index = load(write_osv(tmp_path / "osv"))
    env = Environment.model_validate({"docker": {"host": docker_engine}})

    gone = check_image.fn("dev", env, ImageScan(container="opsflow-no-such-container"), index)
    assert not gone.usable and "opsflow-no-such-container" in gone.summary
    assert gone.findings[0].severity is Severity.HIGH
    no_k8s = check_image.fn("dev", env, ImageScan(pod="api"), index)
    assert not no_k8s.usable and "has no `kubernetes`" in no_k8s.summary

    box = docker_test_containers(docker_busybox_image, ["sleep", "600"])
    outcome = check_image.fn("dev", env, ImageScan(container=box.name), index)
    assert outcome.usable
    (finding,) = outcome.findings
    assert finding.severity is Severity.MEDIUM and "OS packages not checked" in finding.summary
    assert "no python3" in outcome.summary


def test_image_of_a_pod(tmp_path: Path, app: Container, kube_cluster: KubeCluster) -> None:
    """The pod's exec runs in the Debian container: the pod path reads real dpkg data."""
    glibc = glibc_version(app)
    index = load(write_osv(tmp_path / "osv", glibc=glibc + "+1"))
    seen: list[tuple[str, list[str]]] = []

    def kubelet(
        ns: str, pod: str, container: str | None, argv: list[str], stdin: bytes
    ) -> tuple[int, bytes, bytes]:
        seen.append((pod, argv))
        done = app.exec_run(argv, demux=True)
        return done.exit_code, done.output[0] or b"", done.output[1] or b""

    kube_cluster.server.set_exec_handler(kubelet)
    try:
        env = Environment.model_validate(
            {"kubernetes": {"namespace": kube_cluster.namespace, "api_url": kube_cluster.url}}
        )
        outcome = check_image.fn("dev", env, ImageScan(pod=kube_cluster.deployment), index)
    finally:
        kube_cluster.server.set_exec_handler(None)

    assert outcome.target == f"pod {kube_cluster.deployment}"
    targets = finding_targets(outcome)
    assert f"pod {kube_cluster.deployment}: glibc {glibc}" in targets
    assert f"pod {kube_cluster.deployment}: opsflow-oldpkg 1.0" in targets
    assert "image age not known (pods)" in outcome.summary
    (pod,) = {pod for pod, _ in seen}  # one Ready pod, pinned for every command
    assert pod in (kube_cluster.pods["ready-1"], kube_cluster.pods["ready-2"])
