"""dwisynth: multi-b-value and CT->DWI synthesis of diffusion-weighted MRI, and its evaluation.

Units used throughout the package: b-values in s/mm², ADC in x10^-3 mm²/s,
CT in Hounsfield units, lengths in mm.
"""

__version__ = "0.1.0"
