"""Bad CLI input is refused with exit code 2, a message naming the field and the fix, and no
run: nothing reaches Prefect or the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from opsflow.ledger import Ledger


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f'environments:\n  local:\n    disks: ["{tmp_path}"]\n')
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(inventory))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # must never be contacted
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--param", "foo=1"], "health-check has no parameter 'foo' (fix: use one of: notify"),
        (["--param", "notify=maybe"], "notify: Input should be a valid boolean"),
        (["--param", "novalue"], "expected key=value"),
        (["--env", "prod"], "unknown environment 'prod'"),
    ],
)
def test_bad_run_input_exits_2_before_any_run(
    workspace: Path, args: list[str], expected: str
) -> None:
    argv = (
        ["run", "health-check", *args]
        if "--env" in args
        else ["run", "health-check", "--env", "local", *args]
    )
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert Ledger().runs(limit=10) == []


def test_unknown_runbook_names_the_known_ones(workspace: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "nightly-backup", "--env", "local"])
    assert result.exit_code == 2
    assert "choose one of: backup, dr-drill, health-check, recover, restore" in result.output
