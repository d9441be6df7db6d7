"""read_image / read_labels / write_nifti on the real NIfTI and DICOM files and on files written on the fly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.images import read_image, read_labels, write_nifti
from coronary_calcium.io.volume import CTVolume


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _write_itk(array_zyx: np.ndarray, path, spacing_xyz, origin, direction=np.eye(3)):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


# --- real files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape_xyz, axcodes, zoom",
    [("chest_cta_heart_ct_cropped", (122, 102, 112), "LPS", 1.5), ("example_ct_sm", (122, 101, 30), "RAS", 3.0)],
)
def test_totalsegmentator_niftis_come_out_lps(shared_data, name, shape_xyz, axcodes, zoom):
    path = shared_data / "totalseg" / f"{name}.nii.gz"
    original = nib.load(path)
    assert original.shape == shape_xyz and "".join(nib.aff2axcodes(original.affine)) == axcodes
    vol = read_image(path)
    assert vol.shape == shape_xyz[::-1] and vol.hu.dtype == np.float32
    assert vol.meta["original_axcodes"] == axcodes
    assert vol.spacing == (zoom, zoom, zoom)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    # nibabel's own reorientation to LPS gives the same voxels and affine.
    ornt = nib.orientations.ornt_transform(nib.io_orientation(original.affine), nib.orientations.axcodes2ornt("LPS"))
    lps = original.as_reoriented(ornt)
    np.testing.assert_array_equal(vol.hu, np.asarray(lps.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine_ras(), lps.affine, atol=1e-4)
    # Voxel (0, 0, 0) is the original's voxel at the flipped corner: same world point, same value.
    corner = [n - 1 if flip < 0 else 0 for n, flip in zip(shape_xyz, ornt[:, 1])]
    np.testing.assert_allclose(vol.affine_ras() @ [0, 0, 0, 1], original.affine @ [*corner, 1], atol=1e-4)
    assert vol.hu[0, 0, 0] == np.asarray(original.dataobj)[tuple(corner)]
    assert vol.origin == pytest.approx(tuple(np.diag([-1, -1, 1]) @ (original.affine @ [*corner, 1])[:3]))


def test_dicom_folder_is_delegated(qrm_series_dir):
    vol = read_image(qrm_series_dir)
    assert vol.shape == (47, 512, 512) and vol.meta["n_files"] == 47


def test_nifti_round_trip_of_the_qrm_series(qrm_series_dir, tmp_path):
    ct = read_dicom_series(qrm_series_dir)
    hu = np.rint(ct.hu).astype(np.int16)
    path = write_nifti(hu, ct, tmp_path / "qrm.nii.gz")
    assert nib.load(path).get_data_dtype() == np.int16
    back = read_image(path)
    np.testing.assert_array_equal(back.hu, ct.hu)
    assert back.spacing == ct.spacing  # 3.0, 0.488, 0.488 exactly, not the float32 0.48800000548
    assert back.origin == ct.origin
    np.testing.assert_array_equal(back.direction, ct.direction)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[(ct.hu > 600) & (np.arange(512)[None, None, :] < 256)] = 2
    labels[(ct.hu > 600) & (np.arange(512)[None, None, :] >= 256)] = 4
    path = write_nifti(labels, ct, tmp_path / "labels.nii")
    assert nib.load(path).get_data_dtype() == np.uint8
    np.testing.assert_array_equal(read_labels(path, ct), labels)
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed, not left behind


def test_nifti_round_trip_oblique_direction(make_volume, tmp_path):
    vol = make_volume(direction=_rotation(20, 10), origin=(12.5, -40.25, 310.0))
    vol.hu = vol.hu.astype(np.int16)
    back = read_image(write_nifti(vol.hu, vol, tmp_path / "oblique.nii.gz"))
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    labels = (vol.hu > 1000).astype(np.uint8)
    np.testing.assert_array_equal(read_labels(write_nifti(labels, vol, tmp_path / "l.nii.gz"), vol), labels)


def test_nifti_of_a_prone_volume_is_reoriented(make_volume, tmp_path):
    # Prone DICOM (IOP -1,0,0,0,-1,0): columns run left -> right; read back in the LPS convention.
    vol = make_volume(direction=np.diag([-1.0, -1.0, 1.0]))
    back = read_image(write_nifti(vol.hu.astype(np.int16), vol, tmp_path / "prone.nii.gz"))
    np.testing.assert_array_equal(back.hu, vol.hu[:, ::-1, ::-1])
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-12)
    _, ny, nx = vol.shape
    np.testing.assert_allclose(back.affine_lps() @ [0, 0, 0, 1], vol.affine_lps() @ [nx - 1, ny - 1, 0, 1], atol=1e-4)


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd", ".nhdr"])
def test_metaimage(make_volume, tmp_path, suffix):
    vol = make_volume(spacing=(2.5, 0.7, 0.6), origin=(-50.0, -30.5, 100.25))
    path = _write_itk(vol.hu.astype(np.int16), tmp_path / f"ct{suffix}", (0.6, 0.7, 2.5), vol.origin)
    back = read_image(path)
    np.testing.assert_array_equal(back.hu, vol.hu)
    assert back.spacing == pytest.approx((2.5, 0.7, 0.6), abs=1e-12)
    assert back.origin == pytest.approx(vol.origin, abs=1e-12)
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-12)
    assert back.meta["format"] == ("nrrd" if "n" in suffix else "metaimage")
    if suffix == ".mhd":
        (tmp_path / "ct.raw").unlink()
        with pytest.raises(InputError, match="data file ct.raw .* not found beside the header") as err:
            read_image(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["rot.mha", "img.nrrd"])
def test_metaimage_rotated_matches_nifti(make_volume, tmp_path, name):
    vol = make_volume(direction=_rotation(15, 0))
    path = _write_itk(vol.hu.astype(np.int16), tmp_path / name, vol.spacing[::-1], vol.origin, vol.direction)
    back = read_image(path)
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)


def _nrrd_header(space: str, extra: str = "") -> bytes:
    return (f"NRRD0004\ntype: short\ndimension: 3\nspace: {space}\nsizes: 8 8 4\n"
            "space directions: (0.7,0,0) (0,0.7,0) (0,0,5)\nkinds: domain domain domain\nendian: little\n"
            f"space origin: (10,20,30)\n{extra}").encode()


def test_deepcac_nrrd_in_ras_space_comes_out_lps(tmp_path):
    """DeepCAC's data/raw/<id>/img.nrrd, written by hand in RAS space, gzip-encoded as Slicer writes it."""
    import gzip

    raw = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)  # (z, y, x)
    path = tmp_path / "raw" / "P001" / "img.nrrd"
    path.parent.mkdir(parents=True)
    path.write_bytes(_nrrd_header("right-anterior-superior", "encoding: gzip\n\n") + gzip.compress(raw.tobytes()))
    vol = read_image(path)
    assert vol.meta["format"] == "nrrd" and vol.meta["original_axcodes"] == "RAS"
    np.testing.assert_array_equal(vol.hu, raw[:, ::-1, ::-1])  # columns now run right -> left, rows front -> back
    assert vol.spacing == pytest.approx((5.0, 0.7, 0.7))
    # LPS voxel (0, 0, 0) is RAS voxel (x 7, y 7, z 0): RAS (14.9, 24.9, 30) mm, LPS (-14.9, -24.9, 30) mm.
    assert vol.origin == pytest.approx((-14.9, -24.9, 30.0))
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)


def test_nrrd_refusals(tmp_path):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = folder / "img.nhdr"
    path.write_bytes(_nrrd_header("left-posterior-superior", "encoding: raw\ndata file: ../../../etc/passwd\n\n"))
    with pytest.raises(InputError, match="data file '../../../etc/passwd' points outside the header's folder"):
        read_image(path)
    path.write_bytes(_nrrd_header("left-posterior-superior", "encoding: raw\ndata file: img.raw\n\n"))
    with pytest.raises(InputError, match=r"data file img.raw \(data file\) not found beside the header"):
        read_image(path)
    path = folder / "notes.nrrd"
    path.write_text("just some notes\n")
    with pytest.raises(InputError, match="not a NRRD file"):
        read_image(path)
    path.write_bytes(_nrrd_header("left-posterior-superior", "encoding: raw\n\n") + b"\0" * 10)
    with pytest.raises(InputError, match="cannot read nrrd image: RuntimeError") as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    huge = _nrrd_header("left-posterior-superior", "encoding: raw\n\n").replace(b"sizes: 8 8 4", b"sizes: 9000 9000 90")
    path.write_bytes(huge)
    with pytest.raises(InputError, match="size too large"):
        read_image(path)


# --- labels -----------------------------------------------------------------------------------------------------


def test_read_labels_maps_the_scheme(small_volume, tmp_path):
    raw = np.zeros(small_volume.shape, dtype=np.uint8)
    raw[1, 2:4, 2:4], raw[2, 5, 5], raw[3, 7:9, 1] = 1, 2, 3  # orCaScore: 1 LAD, 2 LCX, 3 RCA
    path = _write_itk(raw, tmp_path / "ref.mhd", small_volume.spacing[::-1], small_volume.origin)
    labels = read_labels(path, small_volume, scheme="orcascore")
    assert labels.dtype == np.uint8
    assert labels[1, 2, 2] == 2 and labels[2, 5, 5] == 3 and labels[3, 7, 1] == 4 and labels.sum() == 4 * 2 + 3 + 2 * 4
    qurai = raw * 0
    qurai[0, 0, 0], qurai[0, 0, 1], qurai[0, 0, 2] = 8, 15, 58
    labels = read_labels(write_nifti(qurai, small_volume, tmp_path / "q.nii.gz"), small_volume, scheme="qurai")
    assert labels[0, 0, :3].tolist() == [2, 5, 6]


def test_read_labels_rejects_values_outside_the_scheme(small_volume, tmp_path):
    raw = np.zeros(small_volume.shape, dtype=np.uint8)
    raw[0, 0, 0], raw[1, 1, 1] = 4, 9
    path = write_nifti(raw, small_volume, tmp_path / "l.nii.gz")
    with pytest.raises(InputError, match=r"label values \[4, 9\] are not in the 'orcascore' scheme") as err:
        read_labels(path, small_volume, scheme="orcascore")
    assert str(path) in str(err.value)
    with pytest.raises(InputError, match="unknown label scheme"):
        read_labels(path, small_volume, scheme="nope")


@pytest.mark.parametrize("change", ["shape", "spacing", "origin", "direction"])
def test_read_labels_rejects_other_geometry(small_volume, tmp_path, change):
    other = CTVolume(hu=small_volume.hu, spacing=small_volume.spacing, origin=small_volume.origin,
                     direction=small_volume.direction)
    if change == "shape":
        other.hu = small_volume.hu[:-1]
    elif change == "spacing":
        other.spacing = (2.5, 0.7, 0.65)
    elif change == "origin":
        other.origin = (-50.0, -30.5, 100.5)
    else:
        other.direction = _rotation(5, 0)
    path = write_nifti(np.zeros(other.shape, dtype=np.uint8), other, tmp_path / "l.nii.gz")
    with pytest.raises(InputError, match=f"label geometry does not match the image: {change}") as err:
        read_labels(path, small_volume)
    message = str(err.value)
    expected = {"shape": ("(5, 16, 20)", "(6, 16, 20)"), "spacing": ("0.65", "0.6)"),
                "origin": ("100.5", "100.25"), "direction": ("0.99619", "1.0")}[change]
    assert all(text in message for text in expected), message


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_image_files(tmp_path, small_volume):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="unknown image type"):
        read_image(tmp_path / "picture.png")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 9), dtype=np.int16), np.eye(4)), flat)
    with pytest.raises(InputError, match=r"expected a 3D image, got shape \(8, 9\)"):
        read_image(flat)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4, 2), dtype=np.int16), np.eye(4)), series)
    with pytest.raises(InputError, match="expected a 3D image"):
        read_image(series)
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 1), dtype=np.int16), np.eye(4)), single)
    with pytest.raises(InputError, match="single slice") as err:
        read_image(single)
    assert str(single) in str(err.value)
    trailing = tmp_path / "trailing.nii.gz"  # (x, y, z, 1) is still a volume
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4, 1), dtype=np.int16), np.eye(4)), trailing)
    assert read_image(trailing).shape == (4, 9, 8)
    with pytest.raises(InputError, match="must end with"):
        write_nifti(small_volume.hu, small_volume, tmp_path / "x.mha")
    with pytest.raises(InputError, match="differs"):
        write_nifti(small_volume.hu[1:], small_volume, tmp_path / "x.nii")
