"""Root conftest: loads every fixture module in tests/fixtures/ as a pytest plugin, and scales
the retry delays down (below).

Fixtures start the real components the tests need (Prefect server, PostgreSQL, Redis, Docker
engine, moto S3, the Kubernetes mock API) and stop them at session end. A component that
cannot be started fails the run loudly; nothing is skipped.
"""

import os
from pathlib import Path

# Every retry delay at a tenth (opsflow.errors.retry_delay_scale): the tests inject their faults
# and need the retries, not the waits for a real cause to pass. Set before opsflow is imported,
# and inherited by the servers and runners the fixtures start.
os.environ.setdefault("OPSFLOW_RETRY_DELAY_SCALE", "0.1")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
