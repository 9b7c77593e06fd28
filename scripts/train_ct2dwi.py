import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.ct2dwi import cell_from_params, train_ct2dwi, training_lesions

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
train_ct2dwi(cell_from_params(p.cell), snakemake.input.shards, snakemake.output.model.rsplit("/", 1)[0], p.block,  # noqa: F821
             {**p.training, "threads": snakemake.threads}, p.ct2dwi, p.seed, p.device,  # noqa: F821
             training_lesions(p.lesions) if p.lesions else None)
