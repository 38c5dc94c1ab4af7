"""The `cxrbench` command line: the app and its commands, one module per command group.

Command modules import typer/rich only; each command imports its library modules when it runs, so
`cxrbench --help` answers without loading torch. Every command reports bad input (CxrbenchError) as
one red line and exit code 2 (`cxrbench.cli.errors.reports_user_errors`).
"""

from __future__ import annotations

import typer

from cxrbench.cli import data, demo, encoders, evaluate, leaderboard, plan, pretrain, sweep
from cxrbench.cli.analyze import analyze_app
from cxrbench.cli.study import study_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chest X-ray localized-task benchmark.")

app.command("phantom")(data.phantom_cmd)
app.command("verify")(data.verify_cmd)
app.command("prepare")(data.prepare_cmd)
app.command("tasks")(evaluate.tasks_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("encoders")(encoders.encoders_cmd)
app.command("plan")(plan.plan_cmd)
app.command("demo")(demo.demo_cmd)
app.command("leaderboard")(leaderboard.leaderboard_command)
app.command("rescore")(leaderboard.rescore_command)
app.add_typer(analyze_app, name="analyze")
app.command("sweep")(sweep.sweep_command)
app.command("pretrain")(pretrain.pretrain_command)
app.add_typer(study_app, name="study")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
