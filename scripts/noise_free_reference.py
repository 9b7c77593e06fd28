import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import adc
from dwisynth.synthesis import noise_free_subject

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
noise_free_subject(f"{p.truth}.nii.gz", f"{p.truth}.bval", i.raw, i.raw_bval, i.dwi, i.bval, o.dwi, o.bval,
                   p.inputs, p.targets, p.b0_max)
a = snakemake.params.adc  # noqa: F821  ADC of the synthetic images: the same fit as the acquired ADC
adc(snakemake.output.dwi, snakemake.output.bval, snakemake.input.mask, snakemake.output.adc,  # noqa: F821
    a["min_b"], a["max_b"], a["max_adc"])
