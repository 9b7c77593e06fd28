import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.ct2dwi import grid_summary
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
frames = [pd.read_csv(path, sep="\t", dtype={"slice": str}) for path in snakemake.input]  # noqa: F821
experiments = pd.concat(frames, ignore_index=True)
if "grid" in snakemake.wildcards.keys():  # noqa: F821
    write_table(grid_summary(experiments, snakemake.wildcards.grid), snakemake.output[0])  # noqa: F821
else:  # the experiment table: every volume row
    write_table(experiments[experiments["slice"] == "volume"], snakemake.output[0])  # noqa: F821
