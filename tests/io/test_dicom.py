"""read_dicom_series / write_dicom_series on the real files and on series written on the fly."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series


def _assert_same_geometry(a, b):
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=1e-12)


# --- real files -------------------------------------------------------------------------------------------------


def test_qrm_series(qrm_series_dir):
    vol = read_dicom_series(qrm_series_dir)
    assert vol.shape == (47, 512, 512)
    assert vol.hu.dtype == np.float32
    assert vol.spacing == pytest.approx((3.0, 0.488, 0.488))
    assert vol.slice_thickness == pytest.approx(3.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    z = vol.slice_z_mm()
    assert z[0] == pytest.approx(534.875) and z[-1] == pytest.approx(672.875)
    assert np.all(np.diff(z) > 0)
    assert vol.origin[2] == pytest.approx(534.875)
    # The 5 mm, 800 mg HA/cm3 inserts: bright only on the slices at z 597.9..600.9, peaking about 1275 HU.
    peaks = vol.hu.max(axis=(1, 2))
    insert = (z > 597) & (z < 602)
    assert 1200 < peaks[insert].max() < 1350
    assert peaks[(z > 560) & (z < 590)].max() < 1000  # no insert below
    assert vol.hu.min() == -2048  # padding, intercept 0
    meta = vol.meta
    assert meta["modality"] == "CT" and meta["kvp"] == 120.0 and meta["manufacturer"] == "TOSHIBA"
    assert meta["convolution_kernel"] == "FC12" and meta["n_files"] == 47 and meta["patient_id"] == "TOSHIBA"
    assert meta["series_uid"].startswith("1.2.392.") and meta["study_uid"].startswith("1.2.392.")
    assert meta["source"] == str(qrm_series_dir)
    assert meta["other_series"] == [] and "only series" in meta["series_selection"]


def test_ct1_unc_pixels(shared_data):
    ds = pydicom.dcmread(shared_data / "wg04" / "CT1_UNC.dcm")
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.shape == (512, 512)
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert hu[:20, 246:266].mean() == pytest.approx(-1000, abs=40)  # air in front of the chest
    assert np.all(hu[:20, :20] == -3024)  # outside the reconstruction circle: padding -2000 stored
    assert 100 < np.percentile(hu, 95) < 300  # contrast-enhanced blood and bone exist


def test_ct1_unc_single_slice_is_not_a_volume(shared_data, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(shared_data / "wg04" / "CT1_UNC.dcm", folder / "CT1_UNC.dcm")
    with pytest.raises(InputError, match="single slice") as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value)


# --- written series ---------------------------------------------------------------------------------------------


def test_write_read_round_trip(small_volume, tmp_path):
    paths = write_dicom_series(small_volume, tmp_path / "s", patient_id="P001", kvp=100.0)
    assert [p.name for p in paths] == [f"IM-0001-{i:04d}.dcm" for i in range(1, 7)]
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == CTImageStorage and ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.PatientID == "P001" and str(ds.PatientName) == "P001"
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    assert ds.PixelRepresentation == 0  # HU >= -1024 with intercept -1024: stored values fit uint16
    assert float(ds.SliceThickness) == 2.5 and float(ds.SpacingBetweenSlices) == 2.5
    assert "WindowCenter" in ds and "WindowWidth" in ds and float(ds.KVP) == 100
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, small_volume.hu)
    _assert_same_geometry(vol, small_volume)
    assert vol.meta["patient_id"] == "P001" and vol.meta["kvp"] == 100.0 and vol.meta["modality"] == "CT"


def test_pixel_representation_follows_the_values(small_volume, tmp_path):
    small_volume.hu = np.clip(small_volume.hu, -1000, 2000)
    path = write_dicom_series(small_volume, tmp_path / "u", patient_id="P")[0]
    assert pydicom.dcmread(path).PixelRepresentation == 0  # all stored values >= 0: uint16
    small_volume.hu[0, 0, 0] = -2048  # padding below the intercept: signed
    path = write_dicom_series(small_volume, tmp_path / "s", patient_id="P")[0]
    assert pydicom.dcmread(path).PixelRepresentation == 1
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").hu, small_volume.hu)


def test_write_is_deterministic(small_volume, tmp_path):
    a = write_dicom_series(small_volume, tmp_path / "a", patient_id="P001")
    b = write_dicom_series(small_volume, tmp_path / "b", patient_id="P001")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_dicom_series(small_volume, tmp_path / "c", patient_id="P002")
    assert pydicom.dcmread(c[0]).StudyInstanceUID != pydicom.dcmread(a[0]).StudyInstanceUID


def test_hu_out_of_range_for_16_bits(small_volume, tmp_path):
    small_volume.hu[0, 0, 0] = 70000  # beyond uint16 even after the intercept
    with pytest.raises(InputError, match="does not fit"):
        write_dicom_series(small_volume, tmp_path / "x", patient_id="P")


def test_reversed_instance_numbers_sort_by_position(small_volume, tmp_path):
    paths = write_dicom_series(small_volume, tmp_path / "s", patient_id="P", instance_order="descending")
    instance = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert instance == list(range(6, 0, -1))  # the most inferior slice has the highest number, as in COCA
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, small_volume.hu)
    _assert_same_geometry(vol, small_volume)


def test_shuffled_file_names_and_non_dicom_files(small_volume, tmp_path):
    folder = tmp_path / "s"
    paths = write_dicom_series(small_volume, folder, patient_id="P")
    names = ["Z9", "A1", "M5", "B2", "Q7", "C3"]  # no extension, order unrelated to position
    for path, name in zip(paths, names):
        path.rename(folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    directory = pydicom.Dataset()  # a DICOMDIR-like object: DICOM, but no image
    directory.file_meta = pydicom.dataset.FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = "X"
    directory.save_as(folder / "DICOMDIR", enforce_file_format=True, implicit_vr=False, little_endian=True)
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, small_volume.hu)
    assert vol.meta["n_files"] == 6 and vol.meta["files"] == names


def test_overlapping_slices_keep_thickness_apart(make_volume, tmp_path):
    volume = make_volume(spacing=(1.5, 0.5, 0.5))
    write_dicom_series(volume, tmp_path / "s", patient_id="P", slice_thickness=3.0)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.spacing[0] == pytest.approx(1.5) and vol.slice_thickness == pytest.approx(3.0)


def test_two_series_in_one_folder(make_volume, tmp_path):
    folder = tmp_path / "mixed"
    big = make_volume(shape=(8, 16, 20), seed=1)
    small = make_volume(shape=(5, 16, 20), seed=2)
    # A sagittal series with more images than either: must not win the default rule.
    sagittal = make_volume(shape=(12, 16, 20), seed=3, direction=[[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    write_dicom_series(big, folder, patient_id="P", series_number=1, series_description="calcium")
    write_dicom_series(small, folder, patient_id="P", series_number=2, series_description="other")
    write_dicom_series(sagittal, folder, patient_id="P", series_number=3, series_description="sagittal")
    uids = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        uids[ds.SeriesDescription] = ds.SeriesInstanceUID
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, big.hu)
    assert vol.meta["series_uid"] == uids["calcium"]
    assert "axial CT series with the most slices" in vol.meta["series_selection"]
    assert {s["series_uid"] for s in vol.meta["other_series"]} == {uids["other"], uids["sagittal"]}
    chosen = read_dicom_series(folder, series_uid=uids["other"])
    np.testing.assert_array_equal(chosen.hu, small.hu)
    assert "requested" in chosen.meta["series_selection"]
    with pytest.raises(InputError, match="is not axial: its slice normal .* is 90 degrees .* within 15 degrees"):
        read_dicom_series(folder, series_uid=uids["sagittal"])  # a sagittal series is never scored as if axial
    with pytest.raises(InputError, match="not found") as err:
        read_dicom_series(folder, series_uid="1.2.3")
    assert str(folder) in str(err.value) and uids["calcium"] in str(err.value) and uids["other"] in str(err.value)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntax(make_volume, tmp_path, syntax):
    volume = make_volume(shape=(4, 64, 64))  # OpenJPEG refuses tiles smaller than its resolution levels
    paths = write_dicom_series(volume, tmp_path / "s", patient_id="P")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, volume.hu)


# --- bad input --------------------------------------------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_dicom_series(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM") as err:
        read_dicom_series(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


def _positions(paths):
    return [list(map(float, pydicom.dcmread(p).ImagePositionPatient)) for p in paths]


@pytest.mark.parametrize(
    "case, problem",
    [
        ("modality", "modality MR, not CT"),
        ("uneven", "uneven slice spacing: increments from 1.5000 to 3.5000 mm"),
        ("duplicate", "duplicate slice positions"),
        ("orientation", "inconsistent ImageOrientationPatient"),
        ("pixel_spacing", "inconsistent PixelSpacing"),
        ("matrix", "inconsistent matrix size"),
        ("no_position", "missing ImagePositionPatient"),
        ("no_orientation", "missing ImageOrientationPatient"),
        ("no_pixel_spacing", "missing PixelSpacing"),
        ("tilt", "not stacked along the slice normal"),
    ],
)
def test_bad_series(edit_dicom, small_volume, tmp_path, case, problem):
    folder = tmp_path / "bad"
    paths = write_dicom_series(small_volume, folder, patient_id="P")
    pos = _positions(paths)
    if case == "modality":
        for p in paths:
            edit_dicom(p, Modality="MR")
    elif case == "uneven":
        edit_dicom(paths[3], ImagePositionPatient=[pos[3][0], pos[3][1], pos[3][2] + 1.0])
    elif case == "duplicate":
        edit_dicom(paths[3], ImagePositionPatient=pos[2])
    elif case == "orientation":
        edit_dicom(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 0.96, 0.28])
    elif case == "pixel_spacing":
        edit_dicom(paths[4], PixelSpacing=[0.8, 0.6])
    elif case == "matrix":
        ds = pydicom.dcmread(paths[1])
        ds.Rows, ds.Columns = 8, 8
        ds.PixelData = np.zeros((8, 8), dtype=np.int16).tobytes()
        ds.save_as(paths[1])
    elif case == "tilt":
        for k, p in enumerate(paths):
            edit_dicom(p, ImagePositionPatient=[pos[k][0], pos[k][1] + 0.5 * k, pos[k][2]])
    else:
        tag = {"no_position": "ImagePositionPatient", "no_orientation": "ImageOrientationPatient",
               "no_pixel_spacing": "PixelSpacing"}[case]
        edit_dicom(paths[2], **{tag: None})
    with pytest.raises(InputError) as err:
        read_dicom_series(folder)
    message = str(err.value)
    assert problem in message
    assert str(folder) in message  # the folder, or a file inside it
