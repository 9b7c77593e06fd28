import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.provenance import write_provenance

redirect_to_log(snakemake)  # noqa: F821
p, o = snakemake.params, snakemake.output  # noqa: F821
write_provenance(p.config, pd.DataFrame(p.sheet), p.repo, o.record, o.checksums)
