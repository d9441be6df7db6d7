"""DICOM outputs of a scored DICOM series (``infer --dicom-out``): a Segmentation and a Comprehensive 3D SR.

Written with highdicom into the scan folder, beside ``result.json`` and from the same content, so the numbers
agree:

- ``calcium_seg.dcm``: a DICOM Segmentation (BINARY) of the kept lesions on the source series' grid, one segment
  per artery that has lesions (LM, LAD, LCX, RCA, in that order, and "coronary calcium, artery unknown" for lesions
  without an artery), referencing the source SOP instances. Only slices holding a segment's voxels are stored, one
  frame per (slice, segment). Not written when no lesion is kept: a segmentation needs at least one segment.
- ``calcium_sr.dcm``: a Comprehensive 3D SR holding a TID 1500 measurement report: one measurement group per artery
  of result.json's ``per_artery`` and one for the total, each with Agatston (SCT 450360000, Agatston scoring
  method), volume (DCM 122660, mm3) and mass (DCM 122661, mg). An artery with lesions is a volumetric ROI group
  (TID 1411) referencing its SEG segment; the others and the total are TID 1501 groups; the total carries the risk
  category of result.json's ``category`` (5-class scheme, private coding scheme ``99CORCAL``). The algorithm
  (name and package version) is named in each group and as the observing device; the evidence lists the source
  series and the SEG.

Only a volume read from a DICOM series (`source_files` is not None) can have them: both reference its instances.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from coronary_calcium import __version__
from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import ARTERY_NAMES
from coronary_calcium.report.files import atomic_path
from coronary_calcium.scoring.agatston import UNKNOWN_ARTERY

__all__ = ["SEG_FILE", "SR_FILE", "ALGORITHM_NAME", "segment_label", "source_files", "write_dicom_outputs"]

SEG_FILE = "calcium_seg.dcm"
SR_FILE = "calcium_sr.dcm"
ALGORITHM_NAME = "coronary-calcium"
MANUFACTURER = "coronary_calcium (open source)"
SEG_SERIES_NUMBER = 9001
SR_SERIES_NUMBER = 9002
# Attributes the derived objects copy or reference: without them no SEG / SR can point at the source.
REQUIRED_SOURCE_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")

# Type 2 patient and study attributes the derived objects copy: an absent one is read as empty (not written back).
EMPTY_IF_ABSENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "AccessionNumber", "StudyID")

ARTERY_CODES = {
    "LM": codes.SCT.LeftMainCoronaryArtery,
    "LAD": codes.SCT.AnteriorDescendingBranchOfLeftCoronaryArtery,
    "LCX": codes.SCT.CircumflexCoronaryArtery,
    "RCA": codes.SCT.RightCoronaryArtery,
    UNKNOWN_ARTERY: codes.SCT.CoronaryArtery,
}
ARTERY_RGB = {"LM": (255, 215, 0), "LAD": (220, 40, 40), "LCX": (40, 180, 60), "RCA": (40, 90, 230),
              UNKNOWN_ARTERY: (255, 140, 0)}
CALCIFICATION = Code("18115005", "SCT", "Pathologic calcification")
AGATSTON = Code("450360000", "SCT", "Coronary artery calcium score")
CALCIUM_VOLUME = Code("122660", "DCM", "Calcium Volume")
CALCIUM_MASS = Code("122661", "DCM", "Calcium Mass")
UNITS = {"agatston": Code("1", "UCUM", "no units"), "volume_mm3": Code("mm3", "UCUM", "cubic millimeter"),
         "mass_mg": Code("mg", "UCUM", "milligram")}
PRIVATE_SCHEME = "99CORCAL"
RISK_CATEGORY = Code("RISKCAT", PRIVATE_SCHEME, "Coronary calcium risk category")


def segment_label(artery: str) -> str:
    """The SEG segment label of an artery's lesions."""
    return "coronary calcium, artery unknown" if artery == UNKNOWN_ARTERY else f"coronary calcium, {artery}"


def source_files(volume: CTVolume) -> list[Path] | None:
    """The DICOM files of ``volume``'s slices in slice order, or None when it was not read from a DICOM series."""
    names = volume.meta.get("files")
    folder = volume.meta.get("source")
    if not names or not folder or not Path(folder).is_dir():
        return None
    return [Path(folder) / name for name in names]


def _read_sources(files: list[Path], volume: CTVolume) -> list[Dataset]:
    """The source headers (no pixel data), checked against the scored volume and for the UIDs a reference needs."""
    folder = files[0].parent
    if len(files) != volume.shape[0]:
        raise InputError(folder, f"{len(files)} source files for {volume.shape[0]} slices")
    sources = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # the file changed since it was scored
            raise InputError(path, f"cannot read the source DICOM file again: {exc}") from None
        missing = [tag for tag in REQUIRED_SOURCE_TAGS if not ds.get(tag)]
        if missing:
            raise InputError(path, f"the source lacks {', '.join(missing)}: DICOM SEG / SR cannot reference it")
        if (int(ds.Rows), int(ds.Columns)) != tuple(volume.shape[1:]):
            raise InputError(path, f"matrix {int(ds.Rows)} x {int(ds.Columns)}, but the scored volume's slices are "
                             f"{volume.shape[1]} x {volume.shape[2]}")
        for tag in EMPTY_IF_ABSENT:
            if tag not in ds:
                setattr(ds, tag, "")
        sources.append(ds)
    return sources


def _segment_arteries(payload: dict[str, Any]) -> list[str]:
    """Arteries with kept lesions, in segment order (LM, LAD, LCX, RCA, then any other name, unknown last)."""
    present = {les["artery"] for les in payload["lesions"]}
    order = [a for a in ARTERY_NAMES if a in present]
    order += sorted(present - set(ARTERY_NAMES) - {UNKNOWN_ARTERY})
    return order + ([UNKNOWN_ARTERY] if UNKNOWN_ARTERY in present else [])


def _segment_array(payload: dict[str, Any], lesion_mask: np.ndarray, arteries: list[str]) -> np.ndarray:
    """(Z, Y, X) uint8: each kept voxel's segment number (1-based, the order of ``arteries``), 0 elsewhere."""
    lut = np.zeros(len(payload["lesions"]) + 1, dtype=np.uint8)
    for les in payload["lesions"]:
        lut[int(les["id"])] = arteries.index(les["artery"]) + 1
    return lut[lesion_mask]


def _algorithm(payload: dict[str, Any]) -> Any:
    import highdicom as hd

    model = payload.get("model", {})
    parameters = {k: str(model[k]) for k in ("network_name", "decision", "t_slice") if k in model}
    return hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
                                              version=__version__, parameters=parameters or None)


def build_segmentation(sources: list[Dataset], payload: dict[str, Any], lesion_mask: np.ndarray,
                       arteries: list[str]) -> Any:
    """The BINARY `highdicom.seg.Segmentation` of the kept lesions, one segment per artery in ``arteries``."""
    import highdicom as hd

    algorithm = _algorithm(payload)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=segment_label(artery),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=CALCIFICATION,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=segment_label(artery),
            anatomic_regions=[ARTERY_CODES.get(artery, codes.SCT.CoronaryArtery)],
            display_color=hd.color.CIELabColor.from_rgb(*ARTERY_RGB.get(artery, ARTERY_RGB[UNKNOWN_ARTERY])),
        )
        for i, artery in enumerate(arteries, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_segment_array(payload, lesion_mask, arteries),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=str(payload.get("model", {}).get("network_name", ALGORITHM_NAME)),
        software_versions=__version__,
        device_serial_number="none",
        content_label="CALCIUM",
        content_description="Coronary calcium lesions kept by coronary-calcium",
        series_description=f"Coronary calcium SEG ({ALGORITHM_NAME} {__version__})",
        omit_empty_frames=True,
    )


def _measurements(values: dict[str, Any]) -> list[Any]:
    """Agatston, volume and mass of a per-artery or total entry of result.json."""
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    return [
        hd.sr.Measurement(name=AGATSTON, value=float(values["agatston"]), unit=UNITS["agatston"],
                          method=codes.DCM.AgatstonScoringMethod, algorithm_id=algorithm),
        hd.sr.Measurement(name=CALCIUM_VOLUME, value=float(values["volume_mm3"]), unit=UNITS["volume_mm3"],
                          algorithm_id=algorithm),
        hd.sr.Measurement(name=CALCIUM_MASS, value=float(values["mass_mg"]), unit=UNITS["mass_mg"],
                          algorithm_id=algorithm),
    ]


def tracking_identifier(artery: str | None) -> str:
    """The SR measurement group's tracking identifier: per artery, or (None) the total."""
    return "coronary calcium, total" if artery is None else segment_label(artery)


def _measurement_groups(payload: dict[str, Any], seg: Any, arteries: list[str], series_uid: str) -> list[Any]:
    """One group per artery of ``per_artery`` (a TID 1411 ROI group referencing its segment when it has lesions)
    and the total (TID 1501, with the risk category)."""
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    groups = []
    for artery, values in payload["per_artery"].items():
        common = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                                   identifier=tracking_identifier(artery)),
                      finding_type=CALCIFICATION, algorithm_id=algorithm, measurements=_measurements(values),
                      finding_sites=[hd.sr.FindingSite(ARTERY_CODES.get(artery, codes.SCT.CoronaryArtery))])
        if seg is not None and artery in arteries:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=arteries.index(artery) + 1,
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment,
                                                                                   **common))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))
    category = str(payload["category"])
    risk = hd.sr.QualitativeEvaluation(
        name=RISK_CATEGORY,
        value=Code(category, PRIVATE_SCHEME, f"Agatston {category} ({payload.get('category_scheme', '5-class')})"))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=tracking_identifier(None)),
        finding_type=CALCIFICATION, algorithm_id=algorithm, measurements=_measurements(payload["totals"]),
        finding_sites=[hd.sr.FindingSite(codes.SCT.CoronaryArtery)], qualitative_evaluations=[risk]))
    return groups


def build_sr(sources: list[Dataset], payload: dict[str, Any], seg: Any, arteries: list[str]) -> Any:
    """The `highdicom.sr.Comprehensive3DSR` (TID 1500) of result.json's scores; evidence: the sources and SEG."""
    import highdicom as hd

    model = str(payload.get("model", {}).get("network_name", ALGORITHM_NAME))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, __version__, model]), name=ALGORITHM_NAME,
        manufacturer_name=MANUFACTURER, model_name=model)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=_measurement_groups(payload, seg, arteries, str(sources[0].SeriesInstanceUID)))
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="coronary_calcium risk categories",
        responsible_organization="coronary_calcium project")
    return hd.sr.Comprehensive3DSR(
        evidence=sources + ([seg] if seg is not None else []),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"Coronary calcium scores ({ALGORITHM_NAME} {__version__})",
        coding_schemes=[scheme],
    )


def write_dicom_outputs(payload: dict[str, Any], lesion_mask: np.ndarray, volume: CTVolume,
                        scan_dir: str | Path) -> dict[str, Any]:
    """Write ``calcium_seg.dcm`` (when lesions are kept) and ``calcium_sr.dcm`` into ``scan_dir`` from ``payload``
    (the result.json content) and the lesion id mask; return their description for result.json's ``files``.

    Raises `InputError` when ``volume`` is not a DICOM series or its files cannot be referenced (nothing written).
    """
    files = source_files(volume)
    if files is None:
        raise InputError(volume.meta.get("source", "input"), "not a DICOM series: DICOM SEG and SR reference the "
                         "source series' instances")
    sources = _read_sources(files, volume)
    arteries = _segment_arteries(payload)
    with warnings.catch_warnings():  # highdicom on the source's PatientName "ANONYMOUS" (one component): no news
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = build_segmentation(sources, payload, lesion_mask, arteries) if arteries else None
        sr = build_sr(sources, payload, seg, arteries)
    scan_dir = Path(scan_dir)
    out: dict[str, Any] = {"source_series_instance_uid": str(sources[0].SeriesInstanceUID), "seg": None}
    if seg is not None:
        with atomic_path(scan_dir / SEG_FILE) as tmp:
            seg.save_as(tmp)
        out["seg"] = {"file": SEG_FILE, "sop_instance_uid": str(seg.SOPInstanceUID),
                      "segments": {segment_label(a): i for i, a in enumerate(arteries, start=1)}}
    with atomic_path(scan_dir / SR_FILE) as tmp:
        sr.save_as(tmp)
    out["sr"] = {"file": SR_FILE, "sop_instance_uid": str(sr.SOPInstanceUID)}
    return out
