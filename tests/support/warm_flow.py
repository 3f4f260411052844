"""A flow that says where it ran: its process, the parent, and whether this module was already
imported in the process its run's process was forked from (tests/integration/test_warm_starts.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow

_forked_after_import = False


def _mark() -> None:
    global _forked_after_import
    _forked_after_import = True


os.register_at_fork(after_in_child=_mark)  # runs in a child forked after this import only


@flow(name="warm-start-probe")
def where_am_i(out: str) -> None:
    Path(out).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "imported_before_fork": _forked_after_import,
            }
        )
    )
