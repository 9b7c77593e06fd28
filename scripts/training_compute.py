import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.io import write_table
from dwisynth.training import model_compute

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
rows = [{"method": r["method"], "organ": r["organ"], **model_compute(r["model"], bench)}
        for r, bench in zip(p.models, p.benchmarks)]
write_table(pd.DataFrame(rows), snakemake.output[0])  # noqa: F821
