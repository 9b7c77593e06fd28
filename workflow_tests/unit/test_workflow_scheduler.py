"""The scheduler wake-up fix (dwisynth.workflow_scheduler) on Snakemake's own JobScheduler class."""

import threading

from snakemake.scheduling.job_scheduler import JobScheduler

from dwisynth.workflow_scheduler import coalesce_scheduler_timers


def _wakeups(scheduler, passes: int, delay: float) -> int:
    """How many times the scheduler is woken after `passes` passes that each ask for a wake-up."""
    for _ in range(passes):
        scheduler._schedule_reevalutation(delay)
    woken = 0
    while scheduler._open_jobs.acquire(timeout=1.0 if woken == 0 else 3 * delay):
        woken += 1
    return woken


def test_many_passes_arm_one_wakeup_and_the_next_pass_can_arm_again():
    original = JobScheduler._schedule_reevalutation
    try:
        unpatched = object.__new__(JobScheduler)
        unpatched._open_jobs = threading.Semaphore(0)
        assert _wakeups(unpatched, 50, 0.05) == 50  # Snakemake 9.27: one timer per pass, each a new chain

        assert coalesce_scheduler_timers() and coalesce_scheduler_timers()  # idempotent
        scheduler = object.__new__(JobScheduler)
        scheduler._open_jobs = threading.Semaphore(0)
        assert _wakeups(scheduler, 50, 0.05) == 1
        assert _wakeups(scheduler, 1, 0.05) == 1  # the wake-up's own pass arms the next one
        # a shorter delay than the pending one still gets its earlier wake-up
        scheduler._schedule_reevalutation(30.0)
        assert _wakeups(scheduler, 1, 0.05) == 1
    finally:
        JobScheduler._schedule_reevalutation = original
