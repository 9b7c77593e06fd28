import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.synthesis import interpolated_subject

redirect_to_log(snakemake)  # noqa: F821
i, o, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
interpolated_subject(i.source_dwi, i.source_bval, i.bval, i.mask, dict(o.items()), p.adc, p.inputs, p.targets,
                     norm_record=i.norm_record)
