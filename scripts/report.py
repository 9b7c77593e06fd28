import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.report import TRUTH_TABLES, write_report

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
logs = {(r["method"], r["organ"]): pd.read_csv(r["log"]) for r in p.logs}
truth = {"tables": {name: i.get(name) for name in TRUTH_TABLES}}
write_report(o.html, o.figures, i.summary, i.metrics, i.adc, p.records, p.targets, logs, i.provenance,
             i.get("reader_scores"), p.ct2dwi, truth, i.claims, p.simulated, i.training_compute, p.bvalues)
