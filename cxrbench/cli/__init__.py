"""The `cxrbench` command line: every typer/rich line of the project lives in this package.

Command modules import only typer/rich at module level and their library modules inside the command
function, so `cxrbench --help` starts without loading torch (see benchmarks/bench_cli_startup.py).
"""
