"""opsflow benchmarks (issue 3): ``make bench`` / ``python -m benchmarks``.

Every benchmark runs against a real Prefect server started for the run (free port, temporary
PREFECT_HOME) and compares with a shell baseline where one exists. Method and figures:
docs/performance.md. Not part of the pytest suite.
"""
