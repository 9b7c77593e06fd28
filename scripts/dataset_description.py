import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.provenance import write_dataset_description

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
write_dataset_description(p.git, p.cohorts, snakemake.output[0])  # noqa: F821
