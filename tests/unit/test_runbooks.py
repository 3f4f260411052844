"""Runbook names come from one source, prefect.yaml, and agree with the flows themselves."""

from __future__ import annotations

import pytest

from deployments.runbooks import get_runbook, read_deployment_specs, runbooks
from opsflow.errors import InputError


def test_every_entrypoint_is_a_runbook_named_like_its_flow() -> None:
    entrypoints = {str(spec["entrypoint"]) for spec in read_deployment_specs()}
    assert {book.entrypoint for book in runbooks().values()} == entrypoints
    for name, book in runbooks().items():
        assert book.flow.name == name, f"{book.entrypoint}: flow name differs from {name}"
        assert callable(book.plan), f"{book.module} has no plan_{book.function}"


def test_default_deployment_is_the_first_of_prefect_yaml() -> None:
    first: dict[str, str] = {}
    for spec in read_deployment_specs():
        first.setdefault(str(spec["entrypoint"]), str(spec["name"]))
    for book in runbooks().values():
        assert book.deployment == first[book.entrypoint]
    assert get_runbook("health-check").deployment_name == "health-check/daily"


def test_unknown_runbook_names_the_choices() -> None:
    with pytest.raises(InputError) as caught:
        get_runbook("helth-check")
    assert caught.value.field == "runbook"
    assert "health-check" in caught.value.fix and "dr-drill" in caught.value.fix


def test_every_runbook_requires_a_requester_and_only_schedules_name_one() -> None:
    """The UI's run form and the API must say who asks (a required parameter, no deployment
    default); a schedule's runs are requested by `scheduler` (issue 9)."""
    for book in runbooks().values():
        schema = book.flow.parameters
        assert "requested_by" in schema.required, f"{book.name}: requested_by has a default"
        assert "default" not in schema.properties["requested_by"], book.name
    specs = read_deployment_specs()
    assert {spec["name"] for spec in specs} >= {"daily", "nightly", "manual", "monthly"}
    for spec in specs:
        parameters = spec.get("parameters") or {}
        assert "requested_by" not in parameters, f"deployment {spec['name']} names a requester"
        for schedule in spec.get("schedules") or []:
            assert schedule["parameters"] == {"requested_by": "scheduler"}, spec["name"]
