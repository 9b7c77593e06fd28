import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

import pandas as pd

from dwisynth.io import write_table
from dwisynth.reader_study import read_ratings, score_ratings

redirect_to_log(snakemake)  # noqa: F821
key = pd.read_csv(snakemake.input.key, sep="\t")  # noqa: F821
write_table(score_ratings(read_ratings(snakemake.input.ratings, key), key), snakemake.output[0])  # noqa: F821
