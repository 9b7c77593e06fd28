import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import adc
from dwisynth.synthesis import cdwi_subject

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
cdwi_subject(i.dwi, i.bval, i.mask, o.dwi, o.bval, p.inputs, p.targets)
a = snakemake.params.adc  # noqa: F821  ADC of the synthetic images: the same fit as the acquired ADC
adc(snakemake.output.dwi, snakemake.output.bval, snakemake.input.mask, snakemake.output.adc,  # noqa: F821
    a["min_b"], a["max_b"], a["max_adc"])
