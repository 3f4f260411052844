"""Every task follows the policy of DESIGN.md: verb_object name, explicit timeout, retries only
for transient failures."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from prefect import Task

import tasks
from opsflow.errors import retry_on_transient

ALL_TASKS: list[Task] = sorted(  # type: ignore[type-arg]
    {
        obj
        for info in pkgutil.iter_modules(tasks.__path__)
        for obj in vars(importlib.import_module(f"tasks.{info.name}")).values()
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
