"""Exceptions a user can act on: each message names the file or subject and the fix."""


class DwisynthError(Exception):
    """Base class; the CLI turns these into a one-line message and exit code 2."""


class ConfigError(DwisynthError):
    """The configuration file does not match dwisynth/schemas/config.schema.yaml (and the network blocks)."""


class SampleSheetError(DwisynthError):
    """The sample sheet is missing columns or holds invalid rows."""


class DicomSeriesError(DwisynthError):
    """A DICOM series folder cannot be read or converted."""


class HeaderQCError(DwisynthError):
    """A converted series fails the header checks (modality, b-values, b0)."""
