"""Every exception class, with the CLI's message, and bad arrays as ValueError."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ovdiff_bank as ob
from conftest import HOME, VOC_IMAGE

SMALL = {"short_side": 112, "sizes": [], "include_whole": True}


def test_every_error_derives_from_one_base():
    for cls in (ob.BankNotFound, ob.EncoderMismatch, ob.BadImage, ob.UnknownClass, ob.BankLocked):
        assert issubclass(cls, ob.Error) and issubclass(ob.Error, Exception)


def test_a_missing_bank_is_bank_not_found(tmp_path):
    missing = tmp_path / "nowhere" / "bank"
    with pytest.raises(ob.BankNotFound) as e:
        ob.Segmenter(missing)
    assert str(e.value) == (f"bank {missing} does not exist; build classes with "
                            "`ovdiff-bank add CLASS --images DIR`")
    assert e.value.path == str(missing)
    with pytest.raises(ob.BankNotFound):
        ob.Bank.open(missing)
    with pytest.raises(ob.BankNotFound):
        ob.BankFile(tmp_path / "none.ovbank")


def test_an_unknown_class_has_suggestions(segmenter, bank):
    with pytest.raises(ob.UnknownClass) as e:
        segmenter.segment(VOC_IMAGE, classes=["persn", "cat"], windows=SMALL)
    assert e.value.name == "persn"
    assert e.value.suggestions[0] == "person"
    assert str(e.value) == f"no class `persn` in bank {bank}; did you mean `person`?"


def test_a_bad_image_names_the_file(segmenter, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ob.BadImage) as e:
        segmenter.segment(bad, classes=["cat"])
    assert e.value.path == str(bad) and str(bad) in str(e.value)
    with pytest.raises(ob.BadImage):
        segmenter.segment(tmp_path / "missing.png", classes=["cat"])


def test_another_encoder_is_encoder_mismatch(bank, tmp_path):
    # A bundle of the same graph with another manifest has another fingerprint.
    fake = tmp_path / "dinov2-other"
    fake.mkdir()
    real = HOME / "models" / "dinov2-s14"
    (fake / "model.onnx").symlink_to(real / "model.onnx")
    manifest = (real / "manifest.toml").read_text()
    (fake / "manifest.toml").write_text(manifest.replace('version = "1"', 'version = "2"', 1))
    # The exported file: the bank itself is held by the session's Segmenter.
    seg = ob.Segmenter(bank.parent / "sample.ovbank", encoders=[str(fake)])
    with pytest.raises(ob.EncoderMismatch) as e:
        seg.segment(VOC_IMAGE, classes=["cat"], windows=SMALL)
    err = e.value
    assert len(err.bank_fingerprints) == 1 and len(err.encoder_fingerprints) == 1
    assert err.bank_fingerprints != err.encoder_fingerprints
    assert err.bank_fingerprints[0] in str(err) and err.encoder_fingerprints[0] in str(err)
    # No bundle installed at all: the bank's fingerprint and none.
    empty = tmp_path / "home"
    (empty / "models").mkdir(parents=True)
    (empty / "lib").symlink_to(HOME / "lib")
    seg = ob.Segmenter(bank.parent / "sample.ovbank", home=empty)
    with pytest.raises(ob.EncoderMismatch) as e:
        seg.segment(VOC_IMAGE, classes=["cat"], windows=SMALL)
    assert e.value.bank_fingerprints == err.bank_fingerprints and e.value.encoder_fingerprints == []
    assert "which is not installed" in str(e.value)


def test_a_bank_open_elsewhere_is_bank_locked(tmp_path, parts):
    path = tmp_path / "held"
    ob.Bank.create(path).close()
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, sys, ovdiff_bank as ob
        b = ob.Bank.open({str(path)!r})
        pathlib.Path({str(ready)!r}).write_text("1")
        sys.stdin.read()
    """)], stdin=subprocess.PIPE)
    try:
        for _ in range(600):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the child did not open the bank"
        with pytest.raises(ob.BankLocked) as e:
            ob.Bank.open(path)
        assert e.value.path == str(path)
        assert str(e.value).startswith(f"bank {path} is in use by another process")
        with pytest.raises(ob.BankLocked):
            ob.Segmenter(path)
    finally:
        child.communicate(b"")
    ob.Bank.open(path).close()


@pytest.mark.parametrize(
    "array, says",
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((8, 8), dtype=np.uint8), "2-D"),
        (np.zeros((8, 8, 4), dtype=np.uint8), "4 channels"),
        (np.zeros((8, 16, 3), dtype=np.uint8)[:, ::2], "not C-contiguous"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "empty"),
        (np.zeros((8, 8, 3, 1), dtype=np.uint8), "4-D"),
    ],
)
def test_bad_arrays_are_value_errors(segmenter, array, says):
    with pytest.raises(ValueError, match=says):
        segmenter.segment(array, classes=["cat"])


def test_bad_arrays_are_value_errors_in_bank_add_too(tmp_path, parts):
    with ob.Bank.create(tmp_path / "b") as b:
        with pytest.raises(ValueError, match="4 channels"):
            b.add("cat", images=[np.zeros((8, 8, 4), dtype=np.uint8)])
        with pytest.raises(ValueError, match="no support images"):
            b.add("cat", images=[])


def test_the_native_module_checks_sizes_too(segmenter):
    from ovdiff_bank import _native  # noqa: F401

    with pytest.raises(ValueError, match="needs 12"):
        segmenter._n.segment((b"\0" * 11, 2, 2), ["cat"], "auto", False, None)
    with pytest.raises(ValueError, match="not one of auto"):
        segmenter.segment(np.zeros((8, 8, 3), np.uint8), classes=["cat"], engine="fast")


def test_presets_are_named_layouts(segmenter, bank):
    fast = segmenter.segment(VOC_IMAGE, classes=["person", "cat"], preset="fast")
    whole = segmenter.segment(VOC_IMAGE, classes=["person", "cat"],
                              windows={"short_side": 448, "sizes": [], "include_whole": True})
    assert np.array_equal(fast.labels, whole.labels)
    with pytest.raises(ValueError, match="accurate, balanced or fast"):
        segmenter.segment(VOC_IMAGE, classes=["cat"], preset="quick")
    with pytest.raises(ValueError, match="not both"):
        segmenter.segment(VOC_IMAGE, classes=["cat"], preset="fast", windows=SMALL)
