import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import normalize

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
normalize(i.dwi, i.bval, i.mask, o.dwi, o.bval, o.record, snakemake.wildcards.subject, p.grid,  # noqa: F821
          p.tolerance, p.n4, p.b0_max)
