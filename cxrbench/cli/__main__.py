"""`python -m cxrbench.cli`: the same command-line interface as the `cxrbench` script."""

from cxrbench.cli.app import main

main()
