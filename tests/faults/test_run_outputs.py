"""Fault class: every command that writes a folder (evaluate, sweep, leaderboard, pretrain, analyze run and
correlate, demo)
writes only into a new or empty folder or one of its own kind; a user's folder or file is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cxrbench.errors import OutputDirError
from cxrbench.output_dirs import ABSENT, EMPTY, OURS, RUNS, claim_folder, take_folder

from .helpers import assert_one_line_error, folder_digest, run_cli, write_seg_run


def _user_folder(root: Path) -> Path:
    folder = root / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "todo.txt").write_text("call the radiologist\n")
    (folder / "results.csv").write_text("a,b\n1,2\n")
    return folder


def _commands(prepared_root: Path, target: Path, runs: Path) -> dict[str, list]:
    """Each folder-writing command with `target` as its output folder."""
    return {
        "evaluate": ["evaluate", "random", "--data", prepared_root, "--tasks", "covid_linear",
                     "--arch", "resnet18", "--runs-dir", target],
        "sweep": ["sweep", "-c", "random", "--arch", "resnet18", "--data", prepared_root, "--tasks",
                  "covid_linear", "--profile", "demo", "--executor", "debug", "--runs-dir", target],
        "leaderboard": ["leaderboard", "--runs-dir", runs, "--out", target],
        "pretrain": ["pretrain", "convirt", "--data", prepared_root / "mimic_cxr", "--out", target],
        "analyze": ["analyze", "run", "random", "--data", prepared_root, "--arch", "resnet18", "--out", target],
        "correlate": ["analyze", "correlate", "--runs-dir", runs, "--out", target],
        "demo": ["demo", "--out", target],
    }  # fmt: skip


COMMANDS = ["evaluate", "sweep", "leaderboard", "pretrain", "analyze", "correlate", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_user_folder_is_refused_and_untouched(prepared_root, tmp_path, command):
    user = _user_folder(tmp_path)
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    before, runs_before = folder_digest(user), folder_digest(runs)
    result = run_cli(*_commands(prepared_root, user, runs)[command])
    assert_one_line_error(result, str(user), "already holds files", "results.csv")
    assert folder_digest(user) == before and folder_digest(runs) == runs_before
    assert sorted(p.name for p in user.iterdir()) == ["notes", "results.csv"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_file_as_output_folder_is_refused(prepared_root, tmp_path, command):
    target = tmp_path / "report.txt"
    target.write_text("my report\n")
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    result = run_cli(*_commands(prepared_root, target, runs)[command])
    assert_one_line_error(result, str(target), "is an existing file")
    assert target.read_text() == "my report\n"


def test_runs_dirs_written_before_markers_are_still_accepted(tmp_path):
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    before = folder_digest(runs)
    assert claim_folder(runs, RUNS).state == OURS  # recognised by its run records
    take_folder(runs, RUNS)
    after = folder_digest(runs)
    assert {k: v for k, v in after.items() if k != RUNS.marker} == before  # only the marker was added
    assert claim_folder(runs, RUNS).marker == RUNS.marker


def test_a_new_runs_dir_is_marked_and_claimed_concurrently(tmp_path):
    runs = tmp_path / "new" / "runs"
    assert claim_folder(runs, RUNS).state == ABSENT
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            take_folder(runs, RUNS)
        except BaseException as exc:  # collected: the test asserts there is none
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(p.name for p in runs.iterdir()) == [RUNS.marker]
    (tmp_path / "empty").mkdir()
    assert claim_folder(tmp_path / "empty", RUNS).state == EMPTY


def test_output_inside_its_input_is_refused(tmp_path):
    runs = tmp_path / "runs"
    write_seg_run(runs, "enc", 0)
    before = folder_digest(runs)
    result = run_cli("leaderboard", "--runs-dir", runs, "--out", runs / "enc")
    assert_one_line_error(result, "lies inside the input folder")
    assert folder_digest(runs) == before
    with pytest.raises(OutputDirError, match="contains the input folder"):
        take_folder(tmp_path, RUNS, inputs=[runs])


def test_a_probe_left_by_a_killed_command_does_not_block_a_re_run(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".cxrbench-write-probe.k1ll3d").write_bytes(b"probe")  # killed between probe and marker
    assert claim_folder(runs, RUNS).state == EMPTY
    take_folder(runs, RUNS)
    assert claim_folder(runs, RUNS).marker == RUNS.marker
