import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import ct_brain_mask

redirect_to_log(snakemake)  # noqa: F821
ct_brain_mask(snakemake.input.ct, snakemake.output.mask, snakemake.output.record,  # noqa: F821
              snakemake.wildcards.subject, snakemake.params.brain_hu)  # noqa: F821
