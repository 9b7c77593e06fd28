import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.preprocess.masking import install_hd_bet_v2_weights

redirect_to_log(snakemake)  # noqa: F821
record = install_hd_bet_v2_weights(snakemake.params.weights)  # noqa: F821
Path(snakemake.output[0]).parent.mkdir(parents=True, exist_ok=True)  # noqa: F821
Path(snakemake.output[0]).write_text(json.dumps(record, indent=2) + "\n")  # noqa: F821
