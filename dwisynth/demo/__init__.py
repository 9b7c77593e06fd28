"""The embedded demo cohort: digital phantoms written as vendor DICOM, with their truth."""
