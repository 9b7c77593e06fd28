import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.synthesis import noise_free_subject

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
noise_free_subject(f"{p.truth}.nii.gz", f"{p.truth}.bval", i.raw, i.raw_bval, i.dwi, i.bval, i.mask,
                   dict(o.items()), p.adc, p.inputs, p.targets, p.b0_max, norm_record=i.norm_record)
