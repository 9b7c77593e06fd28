"""Send a script's stdout and stderr to its Snakemake log file."""

import sys


def redirect_to_log(snakemake):
    if snakemake.log:
        handle = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = handle
