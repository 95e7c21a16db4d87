"""The README's set-up commands are the ones CI runs, and the manual's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", setup, flags=re.S)]


def test_readme_opens_with_the_two_setup_commands():
    demo, tests = _readme_commands()
    assert "pip install" in demo and "stitchcli demo" in demo and "HF_HUB_OFFLINE=1" in demo
    assert "pip install" in tests and "pytest" in tests


def test_readme_first_screen_shows_what_the_demo_prints():
    text = (ROOT / "README.md").read_text()
    shown = text.split("## What the demo shows", 1)[1].split("\n## ", 1)[0]
    assert "lite2" in shown and "minilm" in shown and "affine" in shown  # the demo's own tables, not a description
    assert text.index("## What the demo shows") < text.index("## Where to read next")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [_readme_commands()[1]]


@pytest.mark.slow
def test_manual_python_examples_run_as_written(cache_dir, tmp_path, monkeypatch):
    """docs/USAGE.md's Python blocks run exactly as a reader would run them, on an image folder the test provides."""
    from conftest import make_image_folder

    text = (ROOT / "docs" / "USAGE.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    assert "relative_projection" in code and "embed(" in code
    make_image_folder(tmp_path / "images", per_class={"train": 40, "test": 12}, size=32)
    monkeypatch.chdir(tmp_path)  # the examples read ./images
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/USAGE.md", "exec"), namespace)
    assert tuple(namespace["rel"].shape) == (100, 64)
    assert tuple(namespace["space"].values.shape) == (100, 4, 64)
    assert tuple(namespace["features"].shape) == (100, 64)
    rows = namespace["report"].rows
    assert {row.method for row in rows} >= {"relative", "absolute", "translation", "affine"}
    assert all(row.accuracy is None or 0.0 <= row.accuracy <= 1.0 for row in rows)
    assert len(namespace["sweep"].similarity) == 3  # one model pair: the two default projections and the absolute latents
