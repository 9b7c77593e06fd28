import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.ct2dwi import noise_free_ct2dwi

redirect_to_log(snakemake)  # noqa: F821
i, p = snakemake.input, snakemake.params  # noqa: F821
noise_free_ct2dwi(f"{p.truth}.nii.gz", f"{p.truth}.bval", i.raw, i.raw_bval, i.dwi, i.bval,
                  dict(snakemake.output.items()), p.target_b, p.b0_max)  # noqa: F821
