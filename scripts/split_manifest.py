import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.dataset import write_split_manifest

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
write_split_manifest(p.subjects, snakemake.input.qc, p.heldout, p.test_fraction, p.seed, snakemake.output[0],  # noqa: F821
                     tolerance=p.tolerance)
