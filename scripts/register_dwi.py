import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import register_dwi

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
register_dwi(i.dwi, i.bval, o.dwi, o.bval, o.xfm, snakemake.wildcards.subject, p.seed, p.motion, p.b0_max)  # noqa: F821
