import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.steps import make_mask, torch_device

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
make_mask(i.dwi, i.bval, o.mask, o.record, snakemake.wildcards.subject, p.organ, p.method,  # noqa: F821
          b0_max=p.b0_max, device=torch_device(p.device), threads=snakemake.threads,  # noqa: F821
          precision=p.hdbet_precision)  # noqa: F821
