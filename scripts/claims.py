import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.claims import claims_table, floor_limited_bvalues
from dwisynth.io import write_table
from dwisynth.report import read_truth_tables

redirect_to_log(snakemake)  # noqa: F821
i = snakemake.input  # noqa: F821
truth = read_truth_tables({name: i.get(name) for name in ("truth_metrics", "ct2dwi_truth_metrics",
                                                           "ct2dwi_lesion_contrast")})
write_table(claims_table(pd.read_csv(i.metrics, sep="\t", dtype={"slice": str}), truth["truth_metrics"],
                         truth["ct2dwi_truth_metrics"], truth["ct2dwi_lesion_contrast"],
                         floor_limited_b=floor_limited_bvalues(snakemake.params.bvalues)),  # noqa: F821
            snakemake.output[0])  # noqa: F821
