import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _logging import redirect_to_log

from dwisynth.convert import convert_series

redirect_to_log(snakemake)  # noqa: F821
convert_series(
    snakemake.input.dicom,  # noqa: F821
    Path(snakemake.output.nifti).parent,  # noqa: F821
    snakemake.wildcards.subject,  # noqa: F821
    snakemake.params.modality,  # noqa: F821
    b0_max=snakemake.params.b0_max,  # noqa: F821
    # the pseudonym, never the sheet's path: folder names can hold a patient's name and this reaches logs/
    source=f"{snakemake.wildcards.cohort}/sub-{snakemake.wildcards.subject} {snakemake.params.modality} "  # noqa: F821
           "(dicom_dir in the sample sheet)",
    # the sheet's bval/bvec columns (convert_dwi only), for a series whose DICOM carries no b-value tag
    bval=snakemake.input.get("bval"),  # noqa: F821
    bvec=snakemake.input.get("bvec"),  # noqa: F821
)
