import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.evaluate import evaluate_tables, with_ct2dwi
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
p, o = snakemake.params, snakemake.output  # noqa: F821
tables = evaluate_tables(p.records, p.methods, p.targets, p.heldout, workers=snakemake.threads,  # noqa: F821
                         adc_min_snr=p.adc_min_snr, inputs=p.inputs)
ct2dwi = [pd.read_csv(path, sep="\t", dtype={"slice": str}) for path in snakemake.input.ct2dwi]  # noqa: F821
write_table(with_ct2dwi(tables["metrics"], ct2dwi), o.metrics)
write_table(tables["adc"], o.adc)
write_table(tables["lesion_adc"], o.lesion_adc)
write_table(tables["lesion_contrast"], o.lesion_contrast)
write_table(tables["truth_metrics"], o.truth_metrics)
