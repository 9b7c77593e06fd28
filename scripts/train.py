import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.synthesis import train_model, training_lesion_masks

redirect_to_log(snakemake)  # noqa: F821
p, wc = snakemake.params, snakemake.wildcards  # noqa: F821
train_model(wc.method, wc.organ, snakemake.input.shards, snakemake.output.model.rsplit("/", 1)[0], p.block,  # noqa: F821
            {**p.training, "threads": snakemake.threads}, p.bvalues, p.seed, p.device,  # noqa: F821
            upstream=p.upstream, lesion_masks=training_lesion_masks(p.lesion_masks) if p.lesion_masks else None)
