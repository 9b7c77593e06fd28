import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import register_ct

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
register_ct(i.ct, i.dwi, i.bval, o.ct, o.xfm, snakemake.wildcards.subject, p.transform, p.seed, p.b0_max)  # noqa: F821
