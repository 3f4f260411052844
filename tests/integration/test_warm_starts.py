"""`opsflow up` starts served runs as forks of a warm process (deployments.serve.warm_starts).

This pins the one piece of Prefect 3.8 it relies on: the runner starts a flow it holds through
``prefect.flow_engine.run_flow_in_subprocess``, whose process context comes from that module's
``multiprocessing``. If Prefect changes that, these tests fail instead of served runs quietly
going back to a fresh interpreter each (~2 s more before the first task).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from deployments.runbooks import PROJECT_DIR

PROBE = textwrap.dedent(
    """
    import json, multiprocessing.forkserver, os, sys
    from deployments.serve import warm_starts
    warm_starts(["tests.support.warm_flow"])
    import prefect.flow_engine
    from tests.support.warm_flow import where_am_i
    process = prefect.flow_engine.run_flow_in_subprocess(
        where_am_i, parameters={"out": sys.argv[1]}
    )
    process.join(120)
    print(json.dumps({
        "exitcode": process.exitcode,
        "runner": os.getpid(),
        "forkserver": multiprocessing.forkserver._forkserver._forkserver_pid,
    }))
    """
)


def test_a_run_is_a_fork_of_the_warm_process(prefect_api: str, tmp_path: Path) -> None:
    out = tmp_path / "where.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out)],
        cwd=PROJECT_DIR,
        # the forkserver imports by sys.path: the project (for tests.support) as PYTHONPATH
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runner = json.loads(done.stdout.strip().splitlines()[-1])
    assert runner["exitcode"] == 0, done.stderr[-3000:]
    ran = json.loads(out.read_text())
    assert ran["ppid"] == runner["forkserver"] != runner["runner"]
    assert ran["pid"] not in (runner["forkserver"], runner["runner"])
    # the flow's module was imported by the forkserver before it forked the run's process
    assert ran["imported_before_fork"] is True


def test_a_runbook_flow_travels_by_name(prefect_api: str) -> None:
    """A served runbook reaches its run's process as a reference to its module (cloudpickle
    would copy the function without the module globals its annotations name)."""
    import pickle

    import cloudpickle

    from deployments.runbooks import flow_by_name
    from deployments.serve import _reduce_flow
    from flows.backup import backup

    assert _reduce_flow(backup) == (flow_by_name, ("flows.backup", "backup"))
    # through cloudpickle, once the reducer is registered as warm_starts does
    import copyreg

    from prefect import Flow

    copyreg.pickle(Flow, _reduce_flow)
    assert pickle.loads(cloudpickle.dumps(backup)) is backup
