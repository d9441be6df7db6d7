"""Classical anatomy (body, lungs, bone, heart region) and its candidate features, on both synthetic families,
real CT files and scans that lack some of the anatomy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.anatomy import ANATOMY_FEATURES, CAP_MM, anatomy_features, find_anatomy
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.images import read_image
from coronary_calcium.labels import CORONARY_LABELS
from coronary_calcium.scoring.agatston import find_lesions
from coronary_calcium.synth.config import SynthConfig
from coronary_calcium.synth.phantom import generate_patient

SMALL = SynthConfig(matrix=256, n_slices=(24, 24))
F = {name: j for j, name in enumerate(ANATOMY_FEATURES)}


def _col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, F[name]]


def _analyse(hu, spacing):
    anatomy = find_anatomy(hu, spacing)
    lesions = find_lesions(hu, spacing)
    x = anatomy_features(anatomy, lesions, spacing)
    assert x.shape == (len(lesions), len(ANATOMY_FEATURES)) and x.dtype == np.float64
    assert np.isfinite(x).all()
    return anatomy, lesions, x


def _kinds(lesions, labels: np.ndarray, bone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: coronary (majority coronary label) and bone (majority bone tissue before blur)."""
    lab, bon = labels.ravel(), bone.ravel()
    coronary = np.array([np.isin(lab[c.voxels], CORONARY_LABELS).mean() > 0.5 for c in lesions])
    is_bone = np.array([bon[c.voxels].mean() > 0.5 and not lab[c.voxels].any() for c in lesions])
    return coronary, is_bone


def _lungs_both_sides(anatomy) -> None:
    cols = np.nonzero(anatomy.lungs)[2]
    mid = anatomy.lungs.shape[2] / 2
    assert (cols < mid).sum() > 0.2 * cols.size and (cols > mid).sum() > 0.2 * cols.size


def _check_synthetic(hu, spacing, labels, bone, min_bone_share: float) -> None:
    anatomy, lesions, x = _analyse(hu, spacing)
    assert all(anatomy.found.values()), anatomy.notes
    _lungs_both_sides(anatomy)
    coronary, is_bone = _kinds(lesions, labels, bone)
    assert coronary.any() and is_bone.sum() >= 10
    # Coronary calcium lies in the heart region (at most on its edge), never in bone, never behind lung.
    assert (_col(x, "heart_depth_mm")[coronary] >= 0).mean() >= 0.9
    assert (_col(x, "heart_depth_mm")[coronary] > -5).all()
    assert (_col(x, "in_bone")[coronary] == 0).all()
    assert (_col(x, "behind_lung")[coronary] < 0.5).all()
    assert (np.abs(_col(x, "heart_dx")[coronary]) < 1.2).all() and (np.abs(_col(x, "heart_dy")[coronary]) < 1.2).all()
    assert np.median(_col(x, "lung_distance_mm")[coronary]) > 3
    # The generator's bone candidates are mostly in bone, and outside the heart region.
    assert (_col(x, "in_bone")[is_bone] == 1).mean() >= min_bone_share
    assert np.median(_col(x, "heart_depth_mm")[is_bone]) < 0


def _first(gated: bool):
    for i in range(20):
        p = generate_patient(SMALL, i)
        if p.truth["generation"]["gated"] == gated and np.isin(p.labels, CORONARY_LABELS).any():
            return p
    raise AssertionError("no such patient in the first 20")


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "full-chest"])
def test_default_generator(gated):
    p = _first(gated)
    _check_synthetic(p.volume.hu, p.volume.spacing, p.labels, p.bone, min_bone_share=0.8)


def test_shifted_generator():
    shifted = pytest.importorskip("coronary_calcium.synth.shifted",
                                  reason="the shifted generator (synth/shifted.py) is not in this checkout")
    config = shifted.ShiftedConfig(matrix=256, max_slices=24)
    case = shifted.generate_shifted_case(config, 1)  # a gated patient with coronary, aortic and valve calcium
    assert case.truth["generation"]["gated"]
    _check_synthetic(case.volume.hu, case.volume.spacing, case.labels, case.bone, min_bone_share=0.7)


def test_large_dense_plaque_is_not_bone():
    """A 1,400 mm^3 plaque of 1,000 HU over 7 slices at a coronary plaque's place stays out of bone."""
    p = _first(True)
    hu, sp = p.volume.hu.copy(), p.volume.spacing
    seed = max(find_lesions(hu, sp, labels=p.labels), key=lambda c: c.n_voxels)
    semi = np.array([3.5 * sp[0], 6.2, 6.2])  # mm: 7 slices deep, 12 mm across
    zz, yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    c = np.array(seed.centroid_zyx)
    q = sum(((g - ci) * s / a) ** 2 for g, ci, s, a in zip((zz, yy, xx), c, sp, semi))
    plaque = q <= 1.0
    assert plaque.sum() * np.prod(sp) > 1300 and plaque.any(axis=(1, 2)).sum() == 7
    hu[plaque] = 1000.0
    anatomy, lesions, x = _analyse(hu, sp)
    mine = np.array([plaque.ravel()[c.voxels].mean() > 0.5 for c in lesions])
    assert mine.sum() == 7
    assert (_col(x, "in_bone")[mine] == 0).all() and (_col(x, "behind_lung")[mine] == 0).all()
    assert (_col(x, "heart_depth_mm")[mine] > -5).all()


def test_qrm_phantom(qrm_series_dir):
    """A thorax phantom: lung-equivalent inserts, a spine insert, a heart disc with calcium inserts, and
    slices beyond the phantom (no body there, said in the notes)."""
    volume = read_dicom_series(qrm_series_dir)
    anatomy, lesions, x = _analyse(volume.hu, volume.spacing)
    assert anatomy.found["body"] and anatomy.found["bone"]
    assert any("no body on" in n for n in anatomy.notes)
    if anatomy.found["heart"]:
        inside = _col(x, "heart_depth_mm") > 5
        assert inside.any() and (_col(x, "in_bone")[inside] == 0).all()  # the calcium inserts are not bone
    else:
        assert any("heart" in n for n in anatomy.notes)


def test_abdominal_ct(shared_data):
    """Abdomen with the lung bases at the top: body found, bowel gas not lung, no heart (said in a note)."""
    volume = read_image(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    anatomy, _, _ = _analyse(volume.hu, volume.spacing)
    assert anatomy.found["body"] and anatomy.found["bone"]
    assert not anatomy.found["heart"] and any("heart" in n for n in anatomy.notes)
    z = np.nonzero(anatomy.lungs)[0]
    assert z.size == 0 or (z >= volume.shape[0] / 2).mean() > 0.9  # lung bases only, no bowel gas lower down


def test_nema_chest_slice(shared_data):
    """One axial chest slice (LPS, contrast-enhanced): body, lungs on both sides, a note on the single slice."""
    ds = pydicom.dcmread(shared_data / "wg04" / "CT1_UNC.dcm")
    hu = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)[None]
    spacing = (float(ds.SliceThickness), *(float(s) for s in ds.PixelSpacing))
    anatomy, _, _ = _analyse(hu, spacing)
    assert anatomy.found["body"] and anatomy.found["lungs"] and anatomy.found["both_lungs"]
    _lungs_both_sides(anatomy)
    assert any("1 slice" in n for n in anatomy.notes)


def _speck(hu: np.ndarray, z: int, y: int, x: int) -> None:
    hu[z, y : y + 4, x : x + 4] = 400.0


def test_one_slice_of_a_patient():
    p = _first(True)
    k = p.volume.shape[0] // 2
    anatomy, _, x = _analyse(p.volume.hu[k : k + 1].copy(), p.volume.spacing)
    assert anatomy.found["body"] and anatomy.found["lungs"]
    assert len(x) > 0


def test_air_volume():
    hu = np.full((6, 64, 64), -1000.0, dtype=np.float32)
    _speck(hu, 3, 30, 30)  # a candidate floating in air
    anatomy, lesions, x = _analyse(hu, (3.0, 1.0, 1.0))
    assert not any(anatomy.found.values())
    for word in ("body", "lungs", "heart", "bone"):
        assert any(f"no {word}" in n for n in anatomy.notes), word
    assert len(lesions) == 1
    assert _col(x, "lung_distance_mm")[0] == CAP_MM and _col(x, "bone_distance_mm")[0] == CAP_MM
    assert _col(x, "heart_depth_mm")[0] == 0 and _col(x, "heart_dx")[0] == 0 and _col(x, "in_bone")[0] == 0


def test_water_cylinder_head_sized():
    """A head-sized cylinder of water with one dense speck: body only; everything else said in the notes."""
    nz, n, px = 20, 128, 1.5
    yy, xx = np.mgrid[:n, :n]
    inside = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= (80.0 / px) ** 2
    hu = np.where(inside, 0.0, -1000.0).astype(np.float32)[None].repeat(nz, axis=0)
    _speck(hu, 10, 60, 60)
    anatomy, lesions, x = _analyse(hu, (3.0, px, px))
    assert anatomy.found["body"] and not anatomy.found["lungs"] and not anatomy.found["heart"]
    assert not anatomy.found["bone"]
    assert any("no lungs" in n for n in anatomy.notes) and any("no heart" in n for n in anatomy.notes)
    assert len(lesions) == 1 and _col(x, "in_bone")[0] == 0
    assert 50 < _col(x, "body_depth_mm")[0] <= CAP_MM  # the speck is ~70 mm inside the outline


def test_a_ring_of_skin_lies_on_the_outline_though_its_centroid_is_deep():
    """A sharp kernel's overshoot can lift the skin above 130 HU: one ring-shaped candidate whose centroid is the
    body's centre. Its depth is that of its nearest voxel, so the anatomy rule of the decision rejects it."""
    nz, n, px = 12, 128, 1.5
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2) * px
    hu = np.where(r <= 80.0, 0.0, -1000.0).astype(np.float32)
    hu[(r > 77.0) & (r <= 80.0)] = 200.0  # the skin, 3 mm thick
    hu = hu[None].repeat(nz, axis=0)
    _speck(hu, 6, 60, 60)
    _, lesions, x = _analyse(hu, (3.0, px, px))
    ring = [i for i, les in enumerate(lesions) if les.total_area_mm2 > 500]
    speck = [i for i, les in enumerate(lesions) if les.peak_hu == 400.0]
    assert ring and len(speck) == 1
    assert _col(x, "body_depth_mm")[ring].max() < 5.0 and _col(x, "body_depth_mm")[speck[0]] > 50.0


def test_air_opening_to_the_image_edge_is_outside_a_lung_cut_off_by_it_is_not():
    """A gated image cuts the body at its edges. Ambient air between the breasts, open to the image's top edge, is
    outside the body (a sharp kernel's overshoot on that skin is no coronary calcium); a lung cut off by the left
    edge (parenchyma, not pure gas) stays inside, so the tissue next to it is deep."""
    hu = np.full((8, 128, 128), 40.0, dtype=np.float32)
    hu[:, :30, 50:79] = -1000.0  # the air between the breasts
    hu[:, 40:100, :30] = -850.0  # a lung
    _speck(hu, 4, 30, 64)  # on the skin below that air
    _speck(hu, 4, 70, 40)  # beside the lung
    anatomy, lesions, x = _analyse(hu, (3.0, 1.5, 1.5))
    assert anatomy.factor == 2 and not anatomy.body[:, 2:6, 30:35].any() and anatomy.body[:, 30, 5].all()
    (skin, beside_lung) = (d for _, d in sorted(zip([les.centroid_zyx[1] for les in lesions],
                                                    _col(x, "body_depth_mm"))))
    assert skin < 5.0 and beside_lung > 30.0


def test_a_lung_cut_off_at_a_corner_is_inside_and_the_heart_region_lies_between_both_lungs():
    """A gated image can cut a lung at a corner: its rows and its columns both end in lung, so neither fill reaches
    it. It is lung all the same (parenchyma, not gas): inside the body, found as lung, and the region between the
    lungs is the heart's, not a band in front of it; tissue beside it is deep."""
    hu = np.full((8, 128, 128), 40.0, dtype=np.float32)
    hu[:, 50:, :36] = -850.0  # the patient's right lung, cut by the left and bottom edges
    hu[:, 40:110, 92:118] = -850.0  # the left lung, inside the image
    hu[:, :14, :] = -1000.0  # room air above the chest
    _speck(hu, 4, 80, 40)  # beside the cut lung
    anatomy, lesions, x = _analyse(hu, (3.0, 1.5, 1.5))
    assert anatomy.found["both_lungs"] and anatomy.body[:, 100 // 2, 10 // 2].all()
    assert anatomy.lungs[:, 100 // 2, 10 // 2].all() and not anatomy.body[:, 2, 32].any()
    rows = np.flatnonzero(anatomy.heart[4].any(axis=1)) * anatomy.factor
    assert rows.min() < 55 and rows.max() > 100  # from the front to the back of the lungs, not a band
    assert _col(x, "body_depth_mm")[0] > 30.0


def test_the_table_under_a_whole_body_is_not_lung():
    """A full-chest image shows the whole outline: the table's foam under it (air-like, not pure gas, touching the
    image's side edges and the shell the body lies on) stays outside."""
    hu = np.full((8, 128, 128), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:128, :128]
    hu[:, ((yy - 55) / 45.0) ** 2 + ((xx - 64) / 58.0) ** 2 <= 1] = 40.0
    hu[:, 100:103, :] = 200.0  # the table's shell, under the back
    hu[:, 103:112, :] = -750.0  # its foam core, across the whole image
    anatomy = find_anatomy(hu, (3.0, 1.5, 1.5))
    assert not anatomy.body[:, 106 // 2, :].any()


def test_cut_off_body_is_still_body():
    """A body filling the whole image (a heavy patient in a small field of view): no outline, depth capped."""
    hu = np.full((8, 96, 96), 40.0, dtype=np.float32)
    _speck(hu, 4, 10, 10)
    anatomy, _, x = _analyse(hu, (3.0, 2.0, 2.0))
    assert anatomy.body.all()
    assert _col(x, "body_depth_mm")[0] == CAP_MM


def test_no_candidates_and_bad_input():
    anatomy = find_anatomy(np.full((2, 16, 16), -1000.0), (3.0, 1.0, 1.0))
    assert anatomy_features(anatomy, [], (3.0, 1.0, 1.0)).shape == (0, len(ANATOMY_FEATURES))
    with pytest.raises(InputError):
        find_anatomy(np.zeros((16, 16)), (1.0, 1.0))
    with pytest.raises(InputError):
        find_anatomy(np.zeros((2, 16, 16)), (3.0, 0.0, 1.0))
    with pytest.raises(InputError):
        find_anatomy(np.zeros((2, 16, 16)), (3.0, float("nan"), 1.0))


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "full-chest"])
def test_heart_centre_lies_in_the_heart_and_a_160_mm_field_around_it_holds_the_coronaries(gated):
    """The slice classifier looks at 160 mm around `heart_centre_px` (train.json): every coronary calcium voxel of a
    synthetic patient lies inside that field, and the centre itself lies in the heart region."""
    p = _first(gated)
    anatomy = find_anatomy(p.volume.hu, p.volume.spacing)
    row, col = anatomy.heart_centre_px
    _, sy, sx = p.volume.spacing
    z, y, x = np.nonzero(np.isin(p.labels, CORONARY_LABELS))
    assert np.max(np.maximum(np.abs(y - row) * sy, np.abs(x - col) * sx)) <= 80.0
    f = anatomy.factor
    assert anatomy.heart[:, int(row) // f, int(col) // f].any()


def test_no_heart_no_centre():
    anatomy = find_anatomy(np.full((4, 64, 64), -1000.0, np.float32), (3.0, 0.7, 0.7))
    assert anatomy.heart_centre_px is None
