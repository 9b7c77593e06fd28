"""Preprocessing: registration (ANTs), masking (HD-BET / Otsu), b-value normalization."""

import os

# ITK (inside ANTsPy) reads its thread count once, at its first filter, and N4's bias field differs with it: one
# thread in every process, set before ANTs is imported, so a workflow job, the viewer and the CLI give the same
# images whatever ran before them and however many cores the machine has (registration needs one for determinism).
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
