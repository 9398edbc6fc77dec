"""Building and managing banks from Python: the same class digests as the CLI, and list/show/remove/export."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ovdiff_bank as ob
from conftest import SAMPLES, run_cli

PERSON = SAMPLES / "support" / "person"


def cli_digests(cli, bank) -> dict:
    out = json.loads(run_cli(cli, "verify", "--bank", str(bank), "--json"))
    return {c["name"]: c["digest"] for c in out["report"]["classes"]}


@pytest.fixture(scope="module")
def cli_bank(cli, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "bank"
    run_cli(cli, "add", "person", "--images", str(PERSON), "--bank", str(path))
    return path


def test_add_from_paths_and_arrays_gives_the_clis_digest(cli, cli_bank, tmp_path):
    from PIL import Image

    expected = cli_digests(cli, cli_bank)["person"]
    files = sorted(PERSON.glob("*.png"))
    assert len(files) == 2
    with ob.Bank.create(tmp_path / "paths") as b:
        report = b.add("person", images=files)
        assert report["images_used"] == 2
        assert b.verify()["classes"][0]["digest"] == expected
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    with ob.Bank.create(tmp_path / "arrays") as b:
        # Arrays are recorded under the names given (NNN.png by default), as
        # the CLI records the files' names.
        b.add("person", images=[arrays[0], str(files[1])], source=str(PERSON), names=[files[0].name, None])
        assert b.verify()["classes"][0]["digest"] == expected
        b.add("person", images=arrays, source=str(PERSON), names=[f.name for f in files], replace=True)
        assert b.verify()["classes"][0]["digest"] == expected
    assert cli_digests(cli, tmp_path / "arrays")["person"] == expected
    with ob.Bank.create(tmp_path / "folder") as b:
        b.add("person", images=PERSON)
        assert b.verify()["classes"][0]["digest"] == expected


def test_classes_show_remove_export(tmp_path, parts):
    with ob.Bank.create(tmp_path / "bank") as b:
        b.add("person", images=PERSON)
        b.add("grass", images=SAMPLES / "support" / "grass", stuff=True)
        assert b.classes() == ["grass", "person"]
        shown = b.show("grass")
        assert shown["name"] == "grass" and shown["stuff"] is True
        with pytest.raises(ob.UnknownClass) as e:
            b.show("gras")
        assert e.value.suggestions == ["grass"]
        stats = b.export(tmp_path / "all.ovbank")
        assert stats["classes"] == 2
        b.remove("grass")
        assert b.classes() == ["person"]
        with pytest.raises(ob.UnknownClass):
            b.remove("grass")
        with pytest.raises(ob.Error, match="already exists"):
            b.add("person", images=PERSON)
    f = ob.BankFile(tmp_path / "all.ovbank")
    assert f.classes == ["grass", "person"]
    f.verify()
    # A .ovbank file is queried in place.
    seg = ob.Segmenter(tmp_path / "all.ovbank")
    r = seg.segment(np.full((64, 64, 3), 120, np.uint8), classes=["person", "grass"],
                    windows={"short_side": 112, "sizes": []})
    assert r.classes == ["background", "person", "grass"]
    with pytest.raises(ValueError, match="closed"):
        b.classes()
