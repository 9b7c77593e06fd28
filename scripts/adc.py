import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import adc

redirect_to_log(snakemake)  # noqa: F821
i, p = snakemake.input, snakemake.params  # noqa: F821
adc(i.dwi, i.bval, i.mask, snakemake.output[0], p.adc, norm_record=i.record)  # noqa: F821
