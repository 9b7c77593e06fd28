import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.provenance import write_resolved_config

redirect_to_log(snakemake)  # noqa: F821
write_resolved_config(snakemake.params.config, snakemake.output[0])  # noqa: F821
