"""De-identified DICOM as public releases ship it: no SeriesInstanceUID / StudyInstanceUID / SeriesDescription,
private tags, 5 mm non-gated chest series; and folders whose links would make a file count twice."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import SERIES_GROUPING, read_dicom_series, write_dicom_series
from coronary_calcium.io.volume import CTVolume

STRIPPED = ("SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription")


def _release_header(drop=STRIPPED):
    """An `edit_dicom` edit: strip the tags ``drop`` (those releases strip) and add a private tag."""

    def edit(ds, _):
        for name in drop:
            if name in ds:
                delattr(ds, name)
        block = ds.private_block(0x0009, "ACME DEIDENT 1.0", create=True)
        block.add_new(0x01, "LO", "removed by the release tool")

    return edit


@pytest.fixture
def deidentify(edit_dicom):
    """deidentify(paths, drop=STRIPPED, **tags): de-identify the files as releases do, then set ``tags`` (None
    deletes), in place."""

    def run(paths, *, drop=STRIPPED, **tags):
        edit_dicom(paths, _release_header(drop), **tags)

    return run


def _chest(shape=(8, 64, 64), pixel=0.7, seed=0) -> CTVolume:
    """A small non-gated chest-like volume: 5 mm slices, ~0.7 mm pixels (a 512 x 512 field cut to 64 x 64)."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, size=shape).round().astype(np.float32)
    hu[:, :4] = -1000  # air in front of the chest
    hu[:, 30:33, 30:33] = 500  # a calcium speck
    return CTVolume(hu=hu, spacing=(5.0, pixel, pixel), origin=(-22.0, -22.0, -300.0), slice_thickness=5.0)


def test_series_without_uids_reads(deidentify, tmp_path):
    volume = _chest()
    paths = write_dicom_series(volume, tmp_path / "s", patient_id="ANON", series_description="chest 5mm")
    deidentify(paths)
    ds = pydicom.dcmread(paths[0])
    assert "SeriesInstanceUID" not in ds and "StudyInstanceUID" not in ds and "SeriesDescription" not in ds
    assert ds[0x0009, 0x1001].value == "removed by the release tool"
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, volume.hu)
    assert vol.spacing == pytest.approx((5.0, 0.7, 0.7)) and vol.slice_thickness == pytest.approx(5.0)
    assert vol.origin == pytest.approx(volume.origin)
    meta = vol.meta
    assert meta["series_uid"] is None and meta["study_uid"] is None and meta["series_description"] == ""
    assert meta["n_files"] == 8 and meta["other_series"] == []
    assert "only series" in meta["series_selection"] and SERIES_GROUPING in meta["series_selection"]


def test_series_without_uid_or_series_number_reads(deidentify, tmp_path):
    volume = _chest(shape=(5, 32, 32))
    paths = write_dicom_series(volume, tmp_path / "s", patient_id="ANON")
    deidentify(paths, drop=STRIPPED + ("SeriesNumber", "FrameOfReferenceUID", "StudyID"))
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").hu, volume.hu)


def test_two_uidless_series_differing_only_in_pixel_spacing(deidentify, tmp_path):
    folder = tmp_path / "two"
    big = _chest(shape=(8, 64, 64), pixel=0.7, seed=1)
    other = _chest(shape=(6, 64, 64), pixel=0.8, seed=2)  # same FrameOfReference, no SeriesNumber: spacing decides
    paths = write_dicom_series(big, folder, patient_id="ANON", series_number=1)
    paths += write_dicom_series(other, folder, patient_id="ANON", series_number=2)
    deidentify(paths, drop=STRIPPED + ("SeriesNumber",), FrameOfReferenceUID="1.2.3.4")
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, big.hu)
    selection = vol.meta["series_selection"]
    assert selection.startswith("the axial CT series with the most slices")
    assert "PixelSpacing 0.7\\0.7" in selection and "(8 slices) of 2 series" in selection
    assert SERIES_GROUPING in selection
    [rest] = vol.meta["other_series"]
    assert rest["series_uid"] is None and rest["n_files"] == 6 and "PixelSpacing 0.8\\0.8" in rest["series_key"]


def test_two_uidless_series_differing_in_frame_of_reference_and_orientation(deidentify, tmp_path):
    folder = tmp_path / "two"
    tilted = np.array([[1, 0, 0], [0, np.cos(0.1), np.sin(0.1)], [0, -np.sin(0.1), np.cos(0.1)]])  # 5.7 degrees
    first = _chest(shape=(5, 32, 32), seed=3)
    second = _chest(shape=(7, 32, 32), seed=4)
    second.direction = tilted
    paths = write_dicom_series(first, folder, patient_id="ANON", series_number=1)
    paths += write_dicom_series(second, folder, patient_id="ANON", series_number=2)
    deidentify(paths, drop=STRIPPED + ("SeriesNumber",))
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, second.hu)  # the one with more slices, tilted but still axial
    np.testing.assert_allclose(vol.direction, tilted, atol=1e-6)
    assert "(7 slices) of 2 series" in vol.meta["series_selection"]
    assert vol.meta["other_series"][0]["n_files"] == 5


def test_uid_present_keeps_grouping_by_uid(tmp_path):
    """Two series with the same geometry and SeriesNumber stay apart by their UIDs; the selection names the UID."""
    folder = tmp_path / "uids"
    a = write_dicom_series(_chest(shape=(6, 32, 32), seed=5), folder / "a", patient_id="P")
    b = write_dicom_series(_chest(shape=(4, 32, 32), seed=6), folder / "b", patient_id="P")
    for k, path in enumerate(a + b):
        shutil.copy(path, folder / f"f{k:02d}.dcm")
    vol = read_dicom_series(folder)
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    assert vol.meta["series_uid"] == uid and f"{uid} (6 slices) of 2 series" in vol.meta["series_selection"]
    assert SERIES_GROUPING not in vol.meta["series_selection"]


def test_real_qrm_series_with_uids_stripped(deidentify, qrm_series_dir, tmp_path):
    original = read_dicom_series(qrm_series_dir)
    folder = tmp_path / "qrm"
    shutil.copytree(qrm_series_dir, folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    deidentify(files)
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, original.hu)
    assert vol.spacing == original.spacing and vol.origin == original.origin
    np.testing.assert_array_equal(vol.direction, original.direction)
    assert vol.slice_thickness == original.slice_thickness and vol.meta["files"] == original.meta["files"]
    assert vol.meta["series_uid"] is None and vol.meta["study_uid"] is None
    assert vol.meta["kvp"] == 120.0 and vol.meta["convolution_kernel"] == "FC12"
    assert "only series" in vol.meta["series_selection"]


# --- links: each file counts once --------------------------------------------------------------------------------


def test_links_do_not_count_a_file_twice(tmp_path):
    volume = _chest(shape=(4, 32, 32))
    folder = tmp_path / "scan"
    paths = write_dicom_series(volume, folder, patient_id="P")
    os.symlink(".", folder / "selfloop")  # a link to the folder itself
    os.symlink(paths[0].name, folder / "a-link-to-slice-1.dcm")
    os.link(paths[1], folder / "hardlink-to-slice-2.dcm")
    os.symlink("missing.dcm", folder / "dangling.dcm")
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, volume.hu)
    assert vol.meta["n_files"] == 4
    assert "a-link-to-slice-1.dcm" not in vol.meta["files"]  # the real name wins over a link's
    assert len(set(vol.meta["files"])) == 4


def test_a_link_to_a_file_elsewhere_is_read(tmp_path):
    volume = _chest(shape=(3, 32, 32))
    paths = write_dicom_series(volume, tmp_path / "store", patient_id="P")
    folder = tmp_path / "scan"
    folder.mkdir()
    for path in paths:
        os.symlink(path, folder / path.name)
    np.testing.assert_array_equal(read_dicom_series(folder).hu, volume.hu)


def test_requesting_a_uid_that_was_stripped(deidentify, tmp_path):
    paths = write_dicom_series(_chest(shape=(3, 32, 32)), tmp_path / "s", patient_id="P")
    deidentify(paths)
    with pytest.raises(InputError, match="series 1.2.3 not found; series present: \\['no SeriesInstanceUID: "):
        read_dicom_series(tmp_path / "s", series_uid="1.2.3")
