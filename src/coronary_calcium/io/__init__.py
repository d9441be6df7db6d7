"""Readers: DICOM series, NIfTI / MetaImage volumes, COCA XML, and the data manifest."""
