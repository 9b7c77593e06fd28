import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.evaluate import summarize
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
i = snakemake.input  # noqa: F821
write_table(summarize(pd.read_csv(i.metrics, sep="\t", dtype={"slice": str}), pd.read_csv(i.adc, sep="\t"),
                      margin=snakemake.params.margin, lesion_adc=pd.read_csv(i.lesion_adc, sep="\t")),
            snakemake.output[0])  # noqa: F821
