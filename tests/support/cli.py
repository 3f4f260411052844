"""The opsflow CLI as an operator runs it: the console script the package installs."""

from __future__ import annotations

import sys
from pathlib import Path

OPSFLOW = [str(Path(sys.executable).with_name("opsflow"))]
"""argv prefix of the ``opsflow`` command of this virtualenv (``[*OPSFLOW, "run", ...]``)."""
