"""COCA calcium XML: reading a hand-written OsiriX plist, exact write/read round trips, the reference Agatston."""

from __future__ import annotations

import plistlib

import numpy as np
import pytest
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.io.coca import coca_xml_agatston, read_coca_xml, write_coca_xml
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series
from coronary_calcium.labels import AORTIC, LAD, LCX, LM, RCA, VALVE


def _px(x, y):
    return f"({x:f}, {y:f})"


def _roi(name, points, like, k, with_mm=True, **extra):
    """A ROI dict as OsiriX exports it; Point_mm placed on slice k of ``like``."""
    affine = like.affine_lps()
    mm = [affine @ [x, y, k, 1] for x, y in points]
    roi = {"Name": name, "NumberOfPoints": len(points), "Point_px": [_px(x, y) for x, y in points],
           "Point_mm": [f"({p[0]:f}, {p[1]:f}, {p[2]:f})" for p in mm] if with_mm else [],
           "Area": 0.01, "Max": 300.0, "Min": 130.0, "Mean": 200.0, "Dev": 10.0, "Total": 1000.0, "Length": 0.5,
           "Center": "(0.000000, 0.000000, 0.000000)", "IndexInImage": 0, "Type": 20}
    roi.update(extra)
    return roi


def _write_plist(path, images):
    with open(path, "wb") as f:
        plistlib.dump({"Images": images}, f, fmt=plistlib.FMT_XML)
    return path


@pytest.fixture
def gated_series(make_volume, tmp_path):
    """A 5-slice series written with InstanceNumber against z, as COCA's gated scans, read back."""
    volume = make_volume(shape=(5, 32, 32), spacing=(3.0, 0.5, 0.5), origin=(-8.0, -8.0, 100.0))
    write_dicom_series(volume, tmp_path / "dicom", patient_id="coca1", instance_order="descending")
    return read_dicom_series(tmp_path / "dicom")


def test_hand_written_xml(gated_series, tmp_path):
    like = gated_series
    square = [(2, 2), (5, 2), (5, 5), (2, 5)]  # a contour through boundary pixel centres: 4 x 4 pixels
    triangle = [(10, 10), (16, 10), (10, 16)]
    images = [
        {"ImageIndex": 0, "NumberOfROIs": 1, "ROIs": [_roi("Right Coronary Artery", square, like, 0)]},
        {"ImageIndex": 2, "NumberOfROIs": 5, "ROIs": [
            {"Name": "Left Coronary Artery", "NumberOfPoints": 0, "Point_px": [], "Point_mm": [], "Area": 0.0,
             "Max": 0.0, "IndexInImage": 0},  # empty ROIs exist in the real files
            _roi("Left Anterior Descending Artery", triangle, like, 2),
            _roi("Left Circumflex Artery", [(20, 20), (24, 20), (24, 22), (20, 22)], like, 2),
            _roi("Left Circumflex Artery", [(23, 21), (27, 21), (27, 25), (23, 25)], like, 2),  # overlaps: union
            _roi("Right Coronary Artery", [(16, 10), (18, 10), (18, 12), (16, 12)], like, 2),  # touches LAD
        ]},
        # No Point_mm: placed by ImageIndex counted in ascending z.
        {"ImageIndex": 3, "NumberOfROIs": 1, "ROIs": [_roi("Left Coronary Artery", [(6, 6)], like, 3, with_mm=False)]},
        # ImageIndex says 4 but the points lie on the slice at z 103: the z of the points wins.
        {"ImageIndex": 4, "NumberOfROIs": 1, "ROIs": [_roi("Left Coronary Artery", [(1, 30), (3, 30)], like, 1)]},
    ]
    labels = read_coca_xml(_write_plist(tmp_path / "coca1.xml", images), like)
    assert labels.dtype == np.uint8 and labels.shape == like.shape

    expected = np.zeros(like.shape, dtype=np.uint8)
    expected[0, 2:6, 2:6] = RCA
    y, x = np.mgrid[0:32, 0:32]
    expected[2][(x >= 10) & (y >= 10) & (x + y <= 26)] = LAD
    expected[2, 20:23, 20:25] = LCX
    expected[2, 21:26, 23:28] = LCX
    rca = np.zeros((32, 32), dtype=bool)
    rca[10:13, 16:19] = True
    expected[2][rca & (expected[2] == 0)] = RCA  # (16, 10) is on the LAD triangle, which comes first
    expected[3, 6, 6] = LM
    expected[1, 30, 1:4] = LM
    np.testing.assert_array_equal(labels, expected)
    assert (labels[0] == RCA).sum() == 16 and (labels[2] == LAD).sum() == 28


def test_fractional_points_and_the_pixel_count(gated_series, tmp_path):
    # An OsiriX-like contour with fractional vertices: pixel centres strictly inside count.
    circle = [(12 + 3.3 * np.cos(t), 14 + 3.3 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 40, endpoint=False)]
    images = [{"ImageIndex": 1, "NumberOfROIs": 1, "ROIs": [_roi("Left Anterior Descending Artery", circle,
                                                                  gated_series, 1)]}]
    labels = read_coca_xml(_write_plist(tmp_path / "c.xml", images), gated_series)
    y, x = np.mgrid[0:32, 0:32]
    inside = (x - 12) ** 2 + (y - 14) ** 2 <= 3.2 ** 2  # the 40-gon lies between radius 3.29 and 3.3
    np.testing.assert_array_equal(labels[1] == LAD, inside)


def test_unknown_name_and_malformed_files(gated_series, tmp_path):
    images = [{"ImageIndex": 3, "NumberOfROIs": 1, "ROIs": [_roi("Aortic Valve", [(1, 1)], gated_series, 3)]}]
    path = _write_plist(tmp_path / "bad.xml", images)
    with pytest.raises(InputError, match=r"unknown ROI name 'Aortic Valve' in image 3") as err:
        read_coca_xml(path, gated_series)
    assert str(path) in str(err.value)
    with pytest.raises(InputError, match="Aortic Valve"):
        coca_xml_agatston(path)
    broken = tmp_path / "broken.xml"
    broken.write_text("<?xml version='1.0'?><plist><dict><key>Images</key>")
    with pytest.raises(InputError, match="malformed COCA XML") as err:
        read_coca_xml(broken, gated_series)
    assert str(broken) in str(err.value)
    rootless = tmp_path / "rootless.xml"
    with open(rootless, "wb") as f:
        plistlib.dump({"Series": []}, f)
    with pytest.raises(InputError, match="no 'Images' list"):
        read_coca_xml(rootless, gated_series)
    bad_point = _write_plist(tmp_path / "p.xml", [{"ImageIndex": 0, "ROIs": [
        _roi("Right Coronary Artery", [(1, 1)], gated_series, 0, Point_px=["(1.0; x)"])]}])
    with pytest.raises(InputError, match="malformed point"):
        read_coca_xml(bad_point, gated_series)
    outside = _write_plist(tmp_path / "o.xml", [{"ImageIndex": 9, "ROIs": [
        _roi("Right Coronary Artery", [(1, 1)], gated_series, 0, with_mm=False)]}])
    with pytest.raises(InputError, match="ImageIndex 9 is outside"):
        read_coca_xml(outside, gated_series)
    with pytest.raises(InputError, match="not found"):
        read_coca_xml(tmp_path / "missing.xml", gated_series)


# --- writing ----------------------------------------------------------------------------------------------------


def _random_labels(shape, n_blobs, seed):
    """Random-walk blobs of 1..200 pixels with random coronary labels; they touch, merge and enclose holes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(n_blobs):
        k = rng.integers(shape[0])
        blob = np.zeros(shape[1:], dtype=bool)
        y, x = rng.integers(4, shape[1] - 4), rng.integers(4, shape[2] - 4)
        blob[y, x] = True
        size = int(rng.integers(1, 201))
        while blob.sum() < size:
            ys, xs = np.nonzero(blob)
            i = rng.integers(len(ys))
            dy, dx = rng.integers(-1, 2, size=2)
            blob[np.clip(ys[i] + dy, 0, shape[1] - 1), np.clip(xs[i] + dx, 0, shape[2] - 1)] = True
        labels[k][blob] = rng.choice([LM, LAD, LCX, RCA])
    return labels


def _special_shapes(shape):
    labels = np.zeros(shape, dtype=np.uint8)
    s = labels[0]
    s[2, 2] = LAD  # 1 pixel
    s[2, 6:8] = LCX  # 2 pixels, side by side
    s[5, 5], s[6, 6] = RCA, RCA  # 2 pixels, diagonal
    s[10:16, 2], s[15, 2:7] = LM, LM  # L-shaped
    s[2:7, 12:17] = LAD  # ring: a square with a hole
    s[4, 14] = 0
    s[10, 12], s[11, 11], s[11, 13], s[12, 12] = LCX, LCX, LCX, LCX  # diamond: a hole seen only in 4-connectivity
    s[10:13, 20:23], s[13, 23], s[14:17, 24:27] = RCA, RCA, RCA  # two blocks joined by a 1-px diagonal neck
    s[20, 20:30], s[21, 29], s[22, 20:30] = LAD, LAD, LAD  # a U whose arms are single rows
    s[25:30, 2:7], s[27, 7:9] = LM, LAD  # two arteries touching
    labels[1, 20:25, 20:25] = AORTIC  # not coronary: not written
    labels[1, 2:4, 2:4] = VALVE
    return labels


@pytest.mark.parametrize("make_labels", [_special_shapes, lambda shape: _random_labels(shape, 120, seed=3)],
                         ids=["special", "random"])
def test_write_read_round_trip_is_exact(make_volume, tmp_path, make_labels):
    volume = make_volume(shape=(8, 40, 40), spacing=(3.0, 0.45, 0.5), origin=(-10.0, -9.0, 50.0))
    labels = make_labels(volume.shape)
    path = write_coca_xml(labels, volume, tmp_path / "out.xml")
    coronary = np.where(labels <= RCA, labels, 0)
    np.testing.assert_array_equal(read_coca_xml(path, volume), coronary)
    again = write_coca_xml(labels, volume, tmp_path / "again.xml")
    assert path.read_bytes() == again.read_bytes()
    assert not list(tmp_path.glob(".tmp-*"))


def test_written_fields(make_volume, tmp_path):
    volume = make_volume(shape=(4, 20, 20), spacing=(3.0, 0.45, 0.5), origin=(-10.0, -9.0, 50.0))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2, 5:8, 5:9] = RCA  # 12 pixels
    labels[2, 15, 15] = LAD
    labels[0, 1, 1] = LCX
    path = write_coca_xml(labels, volume, tmp_path / "x.xml")
    with open(path, "rb") as f:
        images = plistlib.load(f)["Images"]
    assert [im["ImageIndex"] for im in images] == [0, 2] and images[1]["NumberOfROIs"] == 2
    lad, rca = images[1]["ROIs"]
    assert lad["Name"] == "Left Anterior Descending Artery" and rca["Name"] == "Right Coronary Artery"
    assert [lad["IndexInImage"], rca["IndexInImage"]] == [0, 1]
    hu = volume.hu[2, 5:8, 5:9]
    assert rca["Area"] == pytest.approx(12 * 0.45 * 0.5 / 100)
    assert rca["Max"] == hu.max() and rca["Min"] == hu.min() and rca["Total"] == pytest.approx(hu.sum())
    assert rca["Mean"] == pytest.approx(hu.mean()) and rca["Dev"] == pytest.approx(hu.std())
    assert rca["NumberOfPoints"] == len(rca["Point_px"]) == len(rca["Point_mm"]) == 4  # corners only
    assert rca["Point_px"][0] == "(5.000000, 5.000000)"
    assert rca["Point_mm"][0] == "(-7.500000, -6.750000, 56.000000)"  # x -10 + 5 * 0.5, y -9 + 5 * 0.45, z 50 + 2 * 3
    assert rca["Center"] == "(-6.750000, -6.300000, 56.000000)"
    assert lad["NumberOfPoints"] == 1 and lad["Area"] == pytest.approx(0.45 * 0.5 / 100)


def test_write_rejects_bad_labels(small_volume, tmp_path):
    with pytest.raises(InputError, match="label shape"):
        write_coca_xml(np.zeros((2, 2, 2), dtype=np.uint8), small_volume, tmp_path / "x.xml")
    bad = np.zeros(small_volume.shape, dtype=np.uint8)
    bad[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"label values \[9\]"):
        write_coca_xml(bad, small_volume, tmp_path / "x.xml")


# --- reference Agatston -----------------------------------------------------------------------------------------


def test_agatston_test_vector(tmp_path):
    # shared/reference/agatston.md: a real COCA ROI, 13 px x 0.2253 mm^2 = 2.93 mm^2, peak 206 HU -> 5.86.
    roi = {"Name": "Left Anterior Descending Artery", "NumberOfPoints": 8, "Point_px": ["(1, 1)"] * 8,
           "Area": 13 * 0.2253 / 100, "Max": 206.0}
    images = [{"ImageIndex": 0, "NumberOfROIs": 2, "ROIs": [
        roi, {"Name": "Right Coronary Artery", "NumberOfPoints": 0, "Point_px": [], "Area": 0.0, "Max": 0.0}]}]
    path = _write_plist(tmp_path / "v.xml", images)
    score = coca_xml_agatston(path)
    assert score["LAD"] == pytest.approx(5.86, abs=0.005) and score["total"] == pytest.approx(5.86, abs=0.005)
    assert score["LM"] == score["LCX"] == score["RCA"] == 0.0
    assert coca_xml_agatston(path, slice_increment_mm=1.5)["total"] == pytest.approx(2.93, abs=0.003)


@pytest.mark.parametrize("peak, weight", [(129.9, 0), (130.0, 1), (199.9, 1), (200.0, 2), (399.0, 3), (400.0, 4),
                                          (1275.0, 4)])
def test_agatston_weights(tmp_path, peak, weight):
    roi = {"Name": "Left Circumflex Artery", "NumberOfPoints": 3, "Point_px": ["(1, 1)"] * 3, "Area": 0.02,
           "Max": peak}
    path = _write_plist(tmp_path / "w.xml", [{"ImageIndex": 5, "ROIs": [roi]}])
    assert coca_xml_agatston(path) == pytest.approx({"LM": 0, "LAD": 0, "LCX": 2.0 * weight, "RCA": 0,
                                                      "total": 2.0 * weight})


def test_agatston_of_a_written_xml_matches_the_labels(make_volume, tmp_path):
    volume = make_volume(shape=(4, 30, 30), spacing=(3.0, 0.45, 0.5))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[0, 3:6, 3:7], labels[1, 10:14, 10:12], labels[1, 20, 20:23], labels[3, 5:9, 20:22] = LM, LAD, RCA, RCA
    expected = {"LM": 0.0, "LAD": 0.0, "LCX": 0.0, "RCA": 0.0}
    names = {LM: "LM", LAD: "LAD", LCX: "LCX", RCA: "RCA"}
    for k in range(labels.shape[0]):
        for label, name in names.items():
            parts, n = ndimage.label(labels[k] == label, structure=np.ones((3, 3)))
            for part in range(1, n + 1):
                peak = volume.hu[k][parts == part].max()
                weight = 4 if peak >= 400 else 3 if peak >= 300 else 2 if peak >= 200 else 1 if peak >= 130 else 0
                expected[name] += (parts == part).sum() * volume.pixel_area_mm2 * weight
    score = coca_xml_agatston(write_coca_xml(labels, volume, tmp_path / "a.xml"))
    assert score == pytest.approx({**expected, "total": sum(expected.values())})
    assert score["total"] > 0
