import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.evaluate import gather_tables, monotonicity_subject
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
i, p, o = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
if snakemake.rule == "monotonicity_table":  # noqa: F821
    write_table(gather_tables(i.rows), o[0])
else:
    write_table(monotonicity_subject(i.model, i.dwi, i.bval, i.mask, dict(p.ids), p.b_step, p.min_snr, p.device,
                                     p.rise), o[0])
