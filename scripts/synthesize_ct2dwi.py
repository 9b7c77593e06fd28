import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.ct2dwi import synthesize_ct2dwi

redirect_to_log(snakemake)  # noqa: F821
i = snakemake.input  # noqa: F821
synthesize_ct2dwi(i.model, i.ct, i.ct_mask, dict(snakemake.output.items()), snakemake.wildcards.subject,  # noqa: F821
                  snakemake.params.device)  # noqa: F821
