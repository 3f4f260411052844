"""Bad CLI input is refused with exit code 2, a message naming the field and the fix, and no
run: nothing reaches Prefect or the ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from deployments.runbooks import runbooks
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
    known = ", ".join(sorted(runbooks()))  # every runbook of prefect.yaml, in order
    assert "maintenance" in known and "incident" in known
    assert f"choose one of: {known})" in " ".join(result.output.split())


def test_an_unexpected_error_is_one_line_and_a_redacted_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error boundary of `opsflow`: whatever a command raises, the operator sees one line
    naming a log file under OPSFLOW_HOME/logs; the traceback there is redacted."""
    import cli.main
    from opsflow.redaction import register_secret

    register_secret("crash-secret-value-42")

    def explode() -> None:
        raise RuntimeError("boom with crash-secret-value-42 inside\nsecond line")

    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli.main, "app", explode)
    with pytest.raises(SystemExit) as done:
        cli.main.run_command()
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one line, soft-wrapped at most
    assert "unexpected RuntimeError: boom with" in " ".join(err.split())
    assert "crash-secret-value-42" not in err and "second line" not in err
    logs = list((tmp_path / "home" / "logs").glob("crash-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "Traceback" in text and "explode" in text
    assert "crash-secret-value-42" not in text


def test_bad_input_raised_anywhere_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cli.main
    from opsflow.errors import InputError

    def refuse() -> None:
        raise InputError("OPSFLOW_X", "is [bad, worse]", "set it to [name, ...]")

    monkeypatch.setattr(cli.main, "app", refuse)
    with pytest.raises(SystemExit) as done:
        cli.main.run_command()
    assert done.value.code == 2
    assert "OPSFLOW_X: is [bad, worse] (fix: set it to [name, ...])" in capsys.readouterr().err


@pytest.mark.parametrize(("code", "status", "said"), [(3, 3, ""), (None, 0, ""), ("no", 1, "no")])
def test_leave_runs_the_exit_handlers_flushes_and_exits_with_the_code(
    code: object, status: int, said: str
) -> None:
    """The console script skips the interpreter's teardown (os._exit) but not what must happen
    at exit: the exit handlers (Prefect sends its last logs there) and the buffered output."""
    program = (
        "import atexit, sys, cli.main\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "print('buffered', end='')\n"
        f"cli.main.leave({code!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status
    assert done.stdout == "buffered"
    assert done.stderr.splitlines() == [line for line in (said, "handler ran") if line]
