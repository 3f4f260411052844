"""Root conftest: loads every fixture module in tests/fixtures/ as a pytest plugin.

Fixtures start the real components the tests need (Prefect server, PostgreSQL, Redis, Docker
engine, moto S3, the Kubernetes mock API) and stop them at session end. A component that
cannot be started fails the run loudly; nothing is skipped.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
