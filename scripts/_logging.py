"""Set-up shared by the workflow's scripts: log redirection and a clean exit on SIGTERM."""

import signal
import sys


def redirect_to_log(snakemake):
    """Send stdout and stderr to the rule's log file. SIGTERM (Snakemake stopping a job, Slurm's scancel)
    becomes SystemExit, so `finally` blocks remove staged files instead of leaving them behind."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if snakemake.log:
        handle = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = handle
