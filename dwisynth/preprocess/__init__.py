"""Preprocessing: registration (ANTs), masking (HD-BET / Otsu), b-value normalization."""
