"""The opsflow CLI as an operator runs it: the console script the package installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPSFLOW = [str(Path(sys.executable).with_name("opsflow"))]
"""argv prefix of the ``opsflow`` command of this virtualenv (``[*OPSFLOW, "run", ...]``)."""


def start_up(cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`opsflow up` in its own process group (stop it with deployments.up.stop_process_group),
    its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [*OPSFLOW, "up"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
