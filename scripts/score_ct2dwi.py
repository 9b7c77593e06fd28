import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.ct2dwi import Cell, cell_from_params, score_experiment
from dwisynth.io import write_table

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
cells = [cell_from_params(c) for c in p.cells]
if p.noise_free and snakemake.wildcards.experiment == "main":  # noqa: F821
    cells.append(Cell("main", "noisefree", "main"))
write_table(score_experiment(p.records, cells, p.blocks, p.target_b), snakemake.output[0])  # noqa: F821
