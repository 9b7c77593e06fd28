import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.dataset import write_slice_shard

redirect_to_log(snakemake)  # noqa: F821
i, p = snakemake.input, snakemake.params  # noqa: F821
ct, ct_mask = (i.ct, i.ct_mask) if "ct" in i.keys() else (None, None)
n = write_slice_shard(i.dwi, i.bval, i.mask, snakemake.output[0], p.grid, dict(p.metadata), ct_path=ct,  # noqa: F821
                      ct_mask_path=ct_mask)
print(f"{n} slices")
