"""Read one manifest scan: its CT volume and, where the manifest names one, its reference label volume."""

from __future__ import annotations

import numpy as np

from coronary_calcium.io.coca import read_coca_xml
from coronary_calcium.io.images import read_image, read_labels
from coronary_calcium.io.manifest import ScanEntry
from coronary_calcium.io.volume import CTVolume, check_ct_volume


def read_scan(scan: ScanEntry, *, with_reference: bool = True) -> tuple[CTVolume, np.ndarray | None]:
    """The scan's CT volume and its label volume (project label values), or None without a reference.

    A label volume takes precedence over a COCA XML when the manifest names both (it holds non-coronary labels too).
    """
    volume = read_image(scan.image)
    volume.meta.setdefault("patient_id", scan.patient_id)
    volume.meta["scan_id"] = scan.scan_id
    if not with_reference:
        return volume, None
    if scan.labels is not None:
        return volume, read_labels(scan.labels, like=volume, scheme=scan.label_scheme)
    if scan.coca_xml is not None:
        return volume, read_coca_xml(scan.coca_xml, like=volume)
    return volume, None


def check_scan_readable(scan: ScanEntry) -> None:
    """Read the scan and its reference fully and apply `check_ct_volume` (the check inference applies before
    scoring); raises `InputError` naming the problem."""
    volume, _ = read_scan(scan)
    check_ct_volume(volume, scan.image)
