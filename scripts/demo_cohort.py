import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.demo.cohort import generate_demo_cohort

redirect_to_log(snakemake)  # noqa: F821
generate_demo_cohort(snakemake.config, workers=snakemake.threads)  # noqa: F821
