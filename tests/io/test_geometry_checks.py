"""Geometry and value checks before scoring: each bad input gives one `InputError` naming the item and the rule,
on tiny real files written in tmp_path (DICOM, NIfTI, MetaImage) and on in-memory volumes (`check_ct_volume`)."""

from __future__ import annotations

import dataclasses
import gzip
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series
from coronary_calcium.io.images import read_image
from coronary_calcium.io.manifest import ScanEntry
from coronary_calcium.io.scans import check_scan_readable
from coronary_calcium.io.volume import CTVolume, check_ct_volume


def _rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _refused(call, *texts):
    """The `InputError` ``call`` raises: one line, no traceback text, no chained cause, holding every text."""
    with pytest.raises(InputError) as err:
        call()
    message = str(err.value)
    for text in texts:
        assert text in message, message
    assert "Traceback" not in message and "\n" not in message and err.value.__cause__ is None, message
    return message


@pytest.fixture
def series(make_volume, tmp_path):
    """A written 6-slice series: (folder, paths, volume)."""
    volume = make_volume()
    folder = tmp_path / "s"
    return folder, write_dicom_series(volume, folder, patient_id="P"), volume


# --- DICOM orientation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plane, direction, angle", [
    ("sagittal", [[0, 0, -1], [1, 0, 0], [0, -1, 0]], 90),
    ("coronal", [[1, 0, 0], [0, 0, -1], [0, 1, 0]], 90),
    ("oblique 20 degrees", _rotation_x(20), 20),
])
def test_non_axial_series_are_refused(make_volume, tmp_path, plane, direction, angle):
    write_dicom_series(make_volume(direction=direction), tmp_path / "s", patient_id="P")
    _refused(lambda: read_dicom_series(tmp_path / "s"), str(tmp_path / "s"), "is not axial",
             f"is {angle} degrees from the patient's z (head-feet) axis", "within 15 degrees of axial")


def test_slightly_oblique_series_is_read(make_volume, tmp_path):
    volume = make_volume(direction=_rotation_x(10))
    write_dicom_series(volume, tmp_path / "s", patient_id="P")
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, volume.hu)
    np.testing.assert_allclose(vol.direction, volume.direction, atol=1e-6)


# --- DICOM rescale ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("0", "RescaleSlope 0 "), ("NaN", "RescaleSlope nan"),
                                          ("inf", "RescaleSlope inf"), ("-1", "RescaleSlope -1")])
def test_unusable_rescale_slope(edit_dicom, series, value, shown):
    folder, paths, _ = series
    edit_dicom(paths[2], RescaleSlope=value)
    _refused(lambda: read_dicom_series(folder), str(paths[2]), shown, "must be a finite positive number")


def test_non_finite_rescale_intercept(edit_dicom, series):
    folder, paths, _ = series
    edit_dicom(paths[1], RescaleIntercept="NaN")
    _refused(lambda: read_dicom_series(folder), str(paths[1]), "RescaleIntercept nan is not a finite number")


@pytest.mark.parametrize("tag", ["RescaleIntercept", "RescaleSlope"])
def test_rescale_missing_on_some_slices(edit_dicom, series, tag):
    folder, paths, _ = series
    edit_dicom(paths[3], **{tag: None})
    _refused(lambda: read_dicom_series(folder), str(paths[3]), f"{tag} missing, but present on 5 other slice(s)",
             "(1 of 6 slices lack it)", "required on every slice")


@pytest.mark.parametrize("tag", ["RescaleIntercept", "RescaleSlope"])
def test_rescale_missing_on_every_slice(edit_dicom, series, tag):
    folder, paths, _ = series
    for path in paths:
        edit_dicom(path, **{tag: None})
    _refused(lambda: read_dicom_series(folder), f"{folder}: {tag} missing on every slice", "required on every slice")


def test_rescale_slope_other_than_one_is_applied(edit_dicom, series):
    folder, paths, volume = series
    for path in paths:
        edit_dicom(path, RescaleSlope="2", RescaleIntercept="-2048")
    hu = read_dicom_series(folder).hu
    np.testing.assert_array_equal(hu, (volume.hu + 1024) * 2 - 2048)


# --- DICOM spacing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing, problem", [
    ([1000, 1000], "implausible pixel spacing [1000.0, 1000.0] mm (PixelSpacing): CT pixels are 0.05 .. 5 mm"),
    ([0.01, 0.01], "implausible pixel spacing [0.01, 0.01] mm"),
    ([-0.5, -0.5], "non-positive pixel spacing [-0.5, -0.5] mm"),
    ([0, 0.7], "non-positive pixel spacing [0.0, 0.7] mm"),
])
def test_implausible_pixel_spacing(edit_dicom, series, spacing, problem):
    folder, paths, _ = series
    for path in paths:
        edit_dicom(path, PixelSpacing=spacing)
    message = _refused(lambda: read_dicom_series(folder), str(paths[0]), problem)
    assert "inconsistent" not in message


def test_non_positive_pixel_spacing_on_one_slice_is_not_called_inconsistent(edit_dicom, series):
    folder, paths, _ = series
    edit_dicom(paths[4], PixelSpacing=[-0.5, -0.5])
    _refused(lambda: read_dicom_series(folder), str(paths[4]), "non-positive pixel spacing")


@pytest.mark.parametrize("increment, shown", [(50.0, "50"), (0.05, "0.05")])
def test_implausible_slice_increment(make_volume, tmp_path, increment, shown):
    write_dicom_series(make_volume(spacing=(increment, 0.7, 0.7)), tmp_path / "s", patient_id="P")
    _refused(lambda: read_dicom_series(tmp_path / "s"), str(tmp_path / "s"), f"implausible slice increment {shown} mm",
             "0.1 .. 20 mm apart")


def test_spacings_at_the_edges_of_the_ranges_read(make_volume, tmp_path):
    volume = make_volume(spacing=(20.0, 5.0, 0.05))
    write_dicom_series(volume, tmp_path / "s", patient_id="P")
    assert read_dicom_series(tmp_path / "s").spacing == pytest.approx((20.0, 5.0, 0.05))


# --- NIfTI ----------------------------------------------------------------------------------------------------------


def _nifti(path, array=None, affine=None):
    array = np.full((8, 8, 4), -1000, np.int16) if array is None else array
    nib.save(nib.Nifti1Image(array, np.diag([0.7, 0.7, 5.0, 1.0]) if affine is None else affine), path)
    return path


@pytest.mark.parametrize("pixdim, shown", [((0, 0, 0), "[0.0, 0.0, 0.0]"), ((0.7, 0.7, -5), "[0.7, 0.7, -5.0]"),
                                           ((0.7, np.nan, 5), "[0.7, nan, 5.0]")])
def test_nifti_bad_pixdim(tmp_path, pixdim, shown):
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), np.diag([0.7, 0.7, 5.0, 1.0]))
    img.header["pixdim"][1:4] = pixdim  # nibabel's load would replace the zeros by 1 mm
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    _refused(lambda: read_image(path), str(path), f"pixel spacing {shown}", "must be finite and positive")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_nifti_complex_voxels(tmp_path, dtype):
    path = _nifti(tmp_path / "ct.nii.gz", np.full((8, 8, 4), -1000 + 5j, dtype))
    _refused(lambda: read_image(path), str(path), "complex-valued voxels", "real HU values")


def _header_only(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((0.7, 0.7, 5.0))
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + b"\0" * 64


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_nifti_header_claiming_30000_cubed_voxels(tmp_path, name):
    path = tmp_path / name
    block = _header_only((30000, 30000, 30000))
    path.write_bytes(gzip.compress(block) if name.endswith(".gz") else block)
    _refused(lambda: read_image(path), str(path), "size too large: the header claims 30000 x 30000 x 30000",
             "at most 1e+09 are read")


def test_nifti_shorter_than_its_header(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_header_only((512, 512, 40)))
    _refused(lambda: read_image(path), str(path), "file shorter than the header says", "512 x 512 x 40 int16")


def test_truncated_nifti_gz_gives_the_reason(tmp_path):
    full = _nifti(tmp_path / "full.nii.gz", np.random.default_rng(0).integers(-1000, 1000, (64, 64, 8), np.int16))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(full.read_bytes()[:-2000])
    message = _refused(lambda: read_image(path), str(path), "cannot read nifti image: ")
    assert "LoadImage" not in message and "reader libraries" not in message
    assert message.split("cannot read nifti image: ")[1].strip()  # a reason, not nothing


@pytest.mark.parametrize("content, reason", [(b"", "the file is empty"), (b"hello world\n", "Not a gzipped file"),
                                             (gzip.compress(b"just text"), "no NIfTI-1 or NIfTI-2 header")])
def test_empty_or_text_nifti(tmp_path, capfd, content, reason):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(content)
    _refused(lambda: read_image(path), str(path), "cannot read nifti image", reason)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out


def test_good_nifti_still_reads(tmp_path):
    path = _nifti(tmp_path / "ok.nii")
    vol = read_image(path)
    assert vol.shape == (4, 8, 8) and vol.spacing == pytest.approx((5.0, 0.7, 0.7))


# --- MetaImage ------------------------------------------------------------------------------------------------------


def _mhd(path, shape_zyx=(4, 8, 8)):
    image = sitk.GetImageFromArray(np.full(shape_zyx, -1000, np.int16))
    image.SetSpacing([0.7, 0.7, 5.0])
    sitk.WriteImage(image, str(path))
    return path


def _set_field(path, key, value):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(f"{key} = {value}" if ln.split("=")[0].strip() == key else ln for ln in lines) + "\n")


def test_metaimage_without_its_raw_file(tmp_path, capfd):
    path = _mhd(tmp_path / "ct.mhd")
    (tmp_path / "ct.raw").unlink()
    _refused(lambda: read_image(path), str(path), "data file ct.raw (ElementDataFile) not found beside the header")
    printed = capfd.readouterr()
    assert "Cannot open data file" not in printed.err and "Traceback" not in printed.err


@pytest.mark.parametrize("target", ["../../../etc/passwd", "/etc/passwd", "sub/../../ct.raw"])
def test_metaimage_data_file_outside_its_folder(tmp_path, target):
    folder = tmp_path / "a" / "b" / "c"
    folder.mkdir(parents=True)
    path = _mhd(folder / "ct.mhd")
    _set_field(path, "ElementDataFile", target)
    _refused(lambda: read_image(path), str(path), f"ElementDataFile {target!r} points outside the header's folder")


def test_metaimage_data_file_in_a_subfolder_reads(tmp_path):
    path = _mhd(tmp_path / "ct.mhd")
    (tmp_path / "data").mkdir()
    (tmp_path / "ct.raw").rename(tmp_path / "data" / "ct.raw")
    _set_field(path, "ElementDataFile", "data/ct.raw")
    assert read_image(path).shape == (4, 8, 8)


def test_metaimage_raw_shorter_than_the_header(tmp_path):
    path = _mhd(tmp_path / "ct.mhd")
    _set_field(path, "DimSize", "512 512 40")
    _refused(lambda: read_image(path), str(path), "data file shorter than the header says: 512 bytes",
             "512 x 512 x 40 MET_SHORT voxels need 20971520")


def test_metaimage_huge_and_zero_spacing(tmp_path):
    path = _mhd(tmp_path / "ct.mha")
    text = path.read_bytes()
    path.write_bytes(text.replace(b"DimSize = 8 8 4", b"DimSize = 30000 30000 30000"))
    _refused(lambda: read_image(path), str(path), "size too large")
    path = _mhd(tmp_path / "zero.mhd")
    _set_field(path, "ElementSpacing", "0 0.7 5")
    _refused(lambda: read_image(path), str(path), "element spacing [0.0, 0.7, 5.0] mm", "finite and positive")


def test_text_and_empty_metaimage(tmp_path):
    path = tmp_path / "notes.mhd"
    path.write_text("just some notes\n")
    _refused(lambda: read_image(path), str(path), "not a MetaImage header: no ElementDataFile line")
    path.write_bytes(b"")
    _refused(lambda: read_image(path), str(path), "cannot read metaimage image: the file is empty")


# --- check_ct_volume --------------------------------------------------------------------------------------------------


@pytest.fixture
def ct() -> CTVolume:
    hu = np.random.default_rng(0).normal(40, 30, size=(4, 16, 16)).astype(np.float32)
    hu[:, :2] = -1000
    return CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5), meta={"modality": "CT"})


def test_check_ct_volume_accepts_ct(ct):
    check_ct_volume(ct, "scan")
    check_ct_volume(dataclasses.replace(ct, hu=ct.hu.astype(np.int16)), "scan")
    extended = ct.hu.copy()
    extended[0, 0, 0], extended[0, 0, 1] = -3024, 30000  # padding, and metal on an extended-HU scale
    check_ct_volume(dataclasses.replace(ct, hu=extended), "scan")


@pytest.mark.parametrize("change, texts", [
    ({"hu": np.zeros((16, 16), np.float32)}, ["expected a (Z, Y, X) volume, got shape (16, 16)"]),
    ({"spacing": (0.0, 0.5, 0.5)}, ["non-positive voxel spacing (0.0, 0.5, 0.5) mm"]),
    ({"spacing": (3.0, -0.5, 0.5)}, ["non-positive voxel spacing"]),
    ({"spacing": (3.0, np.nan, 0.5)}, ["no usable voxel spacing"]),
    ({"spacing": (3.0, 1000.0, 1000.0)}, ["implausible pixel spacing 1000 x 1000 mm: CT pixels are 0.05 .. 5 mm"]),
    ({"spacing": (50.0, 0.5, 0.5)}, ["implausible slice increment 50 mm: CT slices are 0.1 .. 20 mm apart"]),
    ({"meta": {"modality": "MR"}}, ["modality MR, not CT"]),
])
def test_check_ct_volume_refuses(ct, change, texts):
    _refused(lambda: check_ct_volume(dataclasses.replace(ct, **change), "scan-7"), "scan-7: ", *texts)


def test_check_ct_volume_refuses_bad_values(ct):
    def refused(hu, *texts):
        return _refused(lambda: check_ct_volume(dataclasses.replace(ct, hu=hu), "scan-7"), "scan-7: ", *texts)

    refused(ct.hu.astype(np.complex64), "complex-valued voxels")
    refused(ct.hu > 0, "voxel type bool is not a number type")
    bad = ct.hu.copy()
    bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf
    refused(bad, "NaN or infinite values (2 voxels)")
    refused(np.full(ct.shape, 1e30, np.float32), "outside the physical range of Hounsfield units (-3100 .. 31000 HU)")
    bad = ct.hu.copy()
    bad[0, 0, 0] = -32768
    refused(bad, "values -32768 ..", "-3100 .. 31000 HU")
    refused(ct.hu - ct.hu.min(), "not a CT image in Hounsfield units: no value below 0")


def test_validate_applies_check_ct_volume(tmp_path):
    path = _nifti(tmp_path / "stored.nii.gz", np.full((8, 8, 4), 24, np.int16))  # stored values, never HU
    entry = ScanEntry(patient_id="P", scan_id="P", image=path, split="test")
    _refused(lambda: check_scan_readable(entry), str(path), "not a CT image in Hounsfield units")
    check_scan_readable(dataclasses.replace(entry, image=_nifti(tmp_path / "ok.nii.gz")))
