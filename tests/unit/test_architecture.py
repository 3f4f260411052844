"""The shape of the code (docs/architecture.md), checked on the real import graph with grimp
(import-linter's graph library): no import cycles anywhere among first-party modules, flows
share code only through ``flows.common``, and modules stay small enough to read at once.

The layer order itself (cli > deployments > flows > tasks > connectors > opsflow) is
import-linter's contract in pyproject.toml, run by ``make lint``.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

PACKAGES = ("opsflow", "connectors", "tasks", "flows", "deployments", "cli")
ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def find_cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the graph's modules (function-level imports included), or None."""
    done: set[str] = set()
    for start in sorted(graph.modules):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        path.append(start)
        on_path.add(start)
        while stack:
            module, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(module)
                done.add(module)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                path.append(child)
                on_path.add(child)
    return None


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="opsflow.errors", imported="opsflow.inventory")
    try:
        cycle = find_cycle(graph)
    finally:
        graph.remove_import(importer="opsflow.errors", imported="opsflow.inventory")
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"opsflow.errors", "opsflow.inventory"} <= set(cycle)


SUBFLOWS = {
    ("flows.alerts", "flows.rollback"),
    ("flows.deploy", "flows.backup"),
    ("flows.deploy", "flows.health_check"),
    ("flows.rollback", "flows.health_check"),
    ("flows.maintenance", "flows.backup"),
    ("flows.maintenance", "flows.dr_drill"),
    ("flows.maintenance", "flows.health_check"),
    ("flows.incident", "flows.health_check"),
    ("flows.incident", "flows.rollback"),
}
"""A runbook that runs another runbook as a subflow imports that runbook's flow (and only
it): composition, not shared code. Each such edge is listed here, so a new one is a
reviewed decision."""


def _in_common(module: str) -> bool:
    return module == "flows.common" or module.startswith("flows.common.")


def test_flows_share_code_only_through_common(graph: grimp.ImportGraph) -> None:
    wrong = {
        (flow, imported)
        for flow in graph.find_descendants("flows")
        if not _in_common(flow)
        for imported in graph.find_modules_directly_imported_by(flow)
        if imported.startswith("flows.")
        and not _in_common(imported)
        and (flow, imported) not in SUBFLOWS
    }
    assert not wrong, f"flows import each other (move shared code to flows.common): {wrong}"
    for importer, imported in SUBFLOWS:
        flow_name = imported.rsplit(".", 1)[1]
        for detail in graph.get_import_details(importer=importer, imported=imported):
            line = " ".join(str(detail["line_contents"]).split())
            assert line.startswith(f"from {imported} import {flow_name}"), (
                f"{importer} takes more than the {flow_name} flow from {imported}: {line}"
            )
            assert "," not in line, f"{importer}: {line}"


def test_modules_are_small() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
