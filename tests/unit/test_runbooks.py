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
