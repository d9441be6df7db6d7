"""Prepare: manifest scans -> labelled axial slices, balanced sampling, and the few transforms MONAI lacks."""
