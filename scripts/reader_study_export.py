import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.reader_study import export_reading_set, reading_cases

redirect_to_log(snakemake)  # noqa: F821
p, o = snakemake.params, snakemake.output  # noqa: F821
cases = reading_cases(p.records, p.methods, p.score_b, p.heldout)
export_reading_set(cases, o.images, o.key, f"{o.images}/ratings_template.tsv", p.seed, p.readers)
