"""Every task follows the policy of DESIGN.md: verb_object name, explicit timeout, retries only
for transient failures."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from prefect import Task

import tasks
from opsflow.errors import API_RETRIES, PROBE_RETRIES, TRANSFER_RETRIES, retry_on_transient

ALL_TASKS: list[Task] = sorted(  # type: ignore[type-arg]
    {
        obj
        for info in pkgutil.walk_packages(tasks.__path__, "tasks.")
        for obj in vars(importlib.import_module(info.name)).values()
        if isinstance(obj, Task)
    },
    key=lambda t: t.name,
)


def test_there_are_tasks() -> None:
    assert len(ALL_TASKS) >= 25


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
def test_task_policy(task: Task) -> None:  # type: ignore[type-arg]
    assert re.fullmatch(r"[a-z]+_[a-z_]+", task.name), "names are verb_object"
    assert task.timeout_seconds and task.timeout_seconds > 0, "every task has a timeout"
    if task.retries:
        assert task.retry_condition_fn is retry_on_transient, "retry only transient failures"
    policies = {
        "probe": PROBE_RETRIES,
        "api": API_RETRIES,
        "transfer": TRANSFER_RETRIES,
    }
    used = [
        kind
        for kind, policy in policies.items()
        if task.retries == policy["retries"]
        and list(task.retry_delay_seconds or []) == list(policy["retry_delay_seconds"])
        and task.retry_jitter_factor == policy["retry_jitter_factor"]
    ]
    assert len(used) == 1, "every task uses one retry policy of opsflow.errors"
