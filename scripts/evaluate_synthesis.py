import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.evaluate import evaluate_multib
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
p, o = snakemake.params, snakemake.output  # noqa: F821
metrics, adc = evaluate_multib(p.records, p.methods, p.targets, p.heldout)
write_table(metrics, o.metrics)
write_table(adc, o.adc)
