import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.synthesis import train_model

redirect_to_log(snakemake)  # noqa: F821
p = snakemake.params  # noqa: F821
train_model(p.method, snakemake.wildcards.organ, snakemake.input.shards, snakemake.input.split,  # noqa: F821
            snakemake.output.model.rsplit("/", 1)[0], p.block, {**p.training, "threads": snakemake.threads},  # noqa: F821
            p.bvalues, p.seed, p.device)
