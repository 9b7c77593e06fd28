"""One pending scheduler wake-up at a time: a fix for Snakemake 9's timer chains, applied by the Snakefile.

At the end of every scheduling pass `JobScheduler.schedule()` arms a `threading.Timer` of one rate-limit
timespan (`--max-jobs-per-timespan`, default 1 s) whose release starts another pass, which arms another
timer. Each finished job also starts a pass, so each adds a chain that never ends: in `make demo` (600 jobs)
the main process ended up making hundreds of passes a second, 680 s of CPU on a 2-core machine (py-spy:
starting timer threads; upstream snakemake/snakemake#3804 and #2354). The timers are also non-daemon, so a
finished run waits for the last one before it exits. One pending timer does the timer's job (wake the
scheduler when the rate limit may have freed slots): a pass that finds one pending arms none.
"""

from __future__ import annotations

import threading
import time


def coalesce_scheduler_timers() -> bool:
    """Replace `JobScheduler._schedule_reevalutation` (sic) with a coalescing one; returns whether it did.
    Idempotent; a Snakemake without that method (a future fix) is left alone."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    original = getattr(JobScheduler, "_schedule_reevalutation", None)
    if original is None:
        return False
    if getattr(original, "coalesced", False):
        return True

    def schedule_reevaluation(self, delay) -> None:
        lock = self.__dict__.setdefault("_wakeup_lock", threading.Lock())
        due = time.monotonic() + float(delay)
        with lock:
            pending = self.__dict__.get("_wakeup_due")
            if pending is not None and pending <= due:
                return  # an earlier wake-up is armed; its pass arms the next one
            self._wakeup_due = due

        def wake() -> None:
            with lock:
                if self._wakeup_due == due:
                    self._wakeup_due = None
            self._open_jobs.release()

        timer = threading.Timer(float(delay), wake)
        timer.daemon = True  # a finished run exits without waiting for it
        timer.start()

    schedule_reevaluation.coalesced = True
    JobScheduler._schedule_reevalutation = schedule_reevaluation
    return True
