"""Wall time of `cxrbench --help` and `cxrbench tasks --help` (target: under 1 s).

Each command runs N times in a fresh process (the `cxrbench` script next to this Python when there is
one, else `python -m cxrbench`); prints the median, min and max. Nothing is asserted: timings are
measured here, never in tests (tests/test_cli.py checks the cause instead: importing the CLI loads no
torch, pandas or matplotlib).

    python benchmarks/bench_cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["tasks", "--help"], ["analyze", "--help"])


def cxrbench_command() -> list[str]:
    script = Path(sys.executable).with_name("cxrbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cxrbench"]


def time_command(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="Fresh processes per command.")
    args = parser.parse_args()
    base = cxrbench_command()
    print(f"{' '.join(base)} ({args.runs} runs each)")
    for extra in COMMANDS:
        times = time_command([*base, *extra], args.runs)
        print(
            f"  {' '.join(['cxrbench', *extra]):<26} median {statistics.median(times):.3f} s"
            f"  (min {min(times):.3f}, max {max(times):.3f})"
        )


if __name__ == "__main__":
    main()
