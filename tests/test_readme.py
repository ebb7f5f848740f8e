"""The README's examples show what the shipped product does."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_the_shipped_default_models_version():
    from rtcalm.engine.loading import LoadedCheckpoint

    shown = re.findall(r"\bdefault@[0-9a-f]{12}\b", README.read_text())
    assert shown, "the README shows no default@<hash> version any more: drop this test or point it at the new example"
    version = LoadedCheckpoint("default").version  # how the daemon names the model it serves
    assert set(shown) == {version}, f"README.md shows {sorted(set(shown))}; the shipped default is {version}"
