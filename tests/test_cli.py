"""The command line as a whole: fast start (no heavy imports), every command reports user errors alike."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.errors import CxrbenchError

HEAVY = (
    "torch",
    "torchvision",
    "pandas",
    "scipy",
    "matplotlib",
    "transformers",
    "timm",
    "segmentation_models_pytorch",
)
COMMANDS = ("phantom", "verify", "prepare", "tasks", "evaluate", "demo", "leaderboard", "rescore", "analyze")
COMMANDS += ("sweep", "pretrain")


def _run_and_list_modules(script: str) -> tuple[str, set[str]]:
    """Output of `script` in a fresh interpreter, and the top-level packages it had imported."""
    code = f"{script}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    head, _, last = out.rstrip().rpartition("\n")
    return head, {m.split(".")[0] for m in json.loads(last)}


def test_cli_import_loads_no_heavy_library() -> None:
    """`cxrbench --help` stays fast because commands import their libraries only when they run."""
    _, loaded = _run_and_list_modules("import cxrbench.cli.app")
    assert not loaded & set(HEAVY), f"importing cxrbench.cli.app loads {sorted(loaded & set(HEAVY))}"


def test_help_lists_every_command_without_heavy_imports() -> None:
    script = "from cxrbench.cli.app import app\n" + "".join(
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        for args in (["--help"], ["tasks", "--help"])
    )
    out, loaded = _run_and_list_modules(script)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    for name in COMMANDS:
        assert f" {name} " in out, name
    assert "--profile" in out  # tasks --help


def _commands(group: typer.main.TyperGroup, prefix: str = "") -> dict[str, object]:
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command.callback
    return found


def test_every_command_turns_a_user_error_into_exit_code_2(monkeypatch) -> None:
    commands = _commands(typer.main.get_command(app))
    assert set(commands) >= {*COMMANDS} - {"analyze"} | {"analyze run", "analyze correlate"}
    unwrapped = [name for name, callback in commands.items() if not hasattr(callback, "__wrapped__")]
    assert not unwrapped, f"commands without cxrbench.cli.errors.reports_user_errors: {unwrapped}"

    def bad_input(*args, **kwargs):
        raise CxrbenchError("rows.csv row 3: expected [x, y], got 'q'")

    monkeypatch.setattr("cxrbench.protocol.tasks.get_profile", bad_input)
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: rows.csv row 3: expected [x, y], got 'q'" in result.output


def test_sweep_help_names_the_engine_executors() -> None:
    from cxrbench.cli.sweep import EXECUTOR_NAMES
    from cxrbench.sweep import EXECUTORS

    assert tuple(EXECUTOR_NAMES) == tuple(EXECUTORS)
