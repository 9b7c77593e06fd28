import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.ct2dwi import score_against_truth
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
p, o = snakemake.params, snakemake.output  # noqa: F821
metrics, lesions = score_against_truth(p.records, p.target_b)
write_table(metrics, o.ct2dwi_truth_metrics)
write_table(lesions, o.ct2dwi_lesion_contrast)
