"""Issue 22 item 7: every Python code block of the README runs as printed.

The blocks run in order, in one namespace (later blocks use ``lm`` from earlier ones), in a
fresh interpreter on the real embedded model. ``google/gemma-3-270m`` is served from a local
Hugging Face cache that points at mkn's converted copy of the same model (nothing is
downloaded), and the pandas block reads the export of a small run at the path it names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "google/gemma-3-270m"


def python_blocks(text: str) -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_blocks_and_opens_with_your_own_model():
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert len(blocks) >= 4
    assert "AutoModelForCausalLM" in blocks[0] and "to_frame()" in blocks[0]
    first_section = text[text.index("\n## "):].split("\n## ")[1]
    assert first_section.startswith("From Python: your own model")
    assert "pip install mkn-neurons" in first_section


def _hub_cache(root: Path) -> Path:
    """A Hugging Face cache holding ``HUB_ID`` as links to mkn's converted default model."""
    from mkn.models.loading import DEFAULT_MODEL, resolve

    source = resolve(DEFAULT_MODEL)
    revision = "0" * 40
    repo = root / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        (snapshot / path.name).symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


@pytest.mark.real
def test_every_readme_python_block_runs_as_printed(tmp_path):
    from mkn.report.export import export_run
    from tests.test_report import fake_locate_run

    run = tmp_path / "work" / "runs" / "m6"  # the pandas block reads runs/m6/export/
    fake_locate_run(run)
    export_run(run)
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    script = tmp_path / "readme_blocks.py"
    script.write_text(
        "import json, sys, time, torch\n"
        "torch.set_num_threads(2)\n"
        f"blocks = json.loads({json.dumps(json.dumps(blocks))})\n"
        "namespace = {}\n"
        "for number, block in enumerate(blocks, 1):\n"
        "    start = time.perf_counter()\n"
        "    exec(compile(block, f'README block {number}', 'exec'), namespace)\n"
        "    print(f'block {number} ran in {time.perf_counter() - start:.0f} s', flush=True)\n"
        "frame = namespace['frame']\n"
        "assert list(frame.columns) == ['layer', 'index', 'hook', 'score', 'rank']\n"
        "model = namespace['model']\n"
        "assert not model.training and next(model.parameters()).requires_grad\n",
        encoding="utf-8")
    env = {**os.environ, "HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub")),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path / "work", env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count(" ran in ") == len(blocks), done.stdout
    print(done.stdout)
