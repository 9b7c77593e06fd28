import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.ct2dwi import cell_from_params, compute_record
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
rows = [compute_record(cell_from_params(c), model, bench)
        for c, model, bench in zip(p.cells, snakemake.input.models, p.benchmarks)]  # noqa: F821
write_table(pd.DataFrame(rows), snakemake.output[0])  # noqa: F821
