import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.synthesis import synthesize_subject

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
synthesize_subject(i.model, i.dwi, i.bval, i.mask, dict(o.items()), p.adc, snakemake.wildcards.subject,  # noqa: F821
                   p.device, norm_record=i.norm_record)
