"""Label values shared by readers, the synthetic generator, scoring and training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BACKGROUND = 0
LM, LAD, LCX, RCA = 1, 2, 3, 4
AORTIC = 5  # aortic wall calcification: must not count as coronary
VALVE = 6  # aortic valve / mitral annulus calcification: must not count as coronary

LABEL_NAMES = {BACKGROUND: "background", LM: "LM", LAD: "LAD", LCX: "LCX", RCA: "RCA", AORTIC: "aortic", VALVE: "valve"}
CORONARY_LABELS = (LM, LAD, LCX, RCA)
ARTERY_NAMES = tuple(LABEL_NAMES[v] for v in CORONARY_LABELS)


# Label schemes of public data sets, mapped onto the project's values (see shared/reference/datasets.md).
LABEL_SCHEMES = {
    "project": {v: v for v in LABEL_NAMES},
    # orCaScore: 1 LAD (left main included), 2 LCX, 3 RCA
    "orcascore": {0: BACKGROUND, 1: LAD, 2: LCX, 3: RCA},
    # qurAI: 8 LAD+LM, 9 LCX, 10 RCA, 15 aorta, 53 aortic valve, 58 mitral valve
    "qurai": {0: BACKGROUND, 8: LAD, 9: LCX, 10: RCA, 15: AORTIC, 53: VALVE, 58: VALVE},
}

# COCA XML ROI names (an OsiriX plist) to labels.
COCA_ROI_NAMES = {
    "Left Coronary Artery": LM,
    "Left Anterior Descending Artery": LAD,
    "Left Circumflex Artery": LCX,
    "Right Coronary Artery": RCA,
}


def majority_label(values: np.ndarray, allowed: Sequence[int] | None = None) -> int:
    """Most frequent label value (ties -> the lower), among ``allowed`` if given; 0 when none."""
    values = np.asarray(values, dtype=np.int64)
    if allowed is not None:
        values = values[np.isin(values, allowed)]
    if values.size == 0:
        return 0
    return int(np.argmax(np.bincount(values)))
