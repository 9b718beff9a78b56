"""The README's examples run as pasted.

Every ```sh and ```python block of README.md is run in order, in a fresh folder where the
demo has been run (as `make demo` does), with the project's environment active (as after
`. .venv/bin/activate`). A block preceded by `<!-- not run: why -->` is left out, and the
reason must be given: the set-up lines themselves, and code that needs the Slicer application.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w+)[^\n]*\n(?P<code>.*?)\n```", re.S)
NOT_RUN = re.compile(r"<!-- not run: (?P<why>[^>]+?) -->")


def readme_blocks():
    """(language, code, reason it is not run or None) for each fenced block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        skip = NOT_RUN.search(match.group("before"))
        blocks.append((match.group("lang"), match.group("code"), skip.group("why") if skip else None))
    return blocks


def test_every_block_left_out_says_why_and_most_blocks_run():
    blocks = readme_blocks()
    runnable = [b for b in blocks if b[2] is None and b[0] in ("sh", "python")]
    assert len(runnable) >= 4, "the README should show runnable command-line and Python examples"
    for language, code, why in blocks:
        assert language in ("sh", "python", "text"), f"unexpected block language {language!r}"
        if why is not None:
            assert len(why.strip()) > 5


def test_readme_examples_run_as_pasted(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", QT_QPA_PLATFORM="offscreen")
    setup = subprocess.run(["vertebral-marrow", "-q", "demo", "--out", "demo-output"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stderr[-3000:]
    for number, (language, code, why) in enumerate(readme_blocks(), start=1):
        if why is not None or language not in ("sh", "python"):
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README block {number} ({language}) failed:\n{code}\n--- stderr:\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr, f"README block {number}:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("text", ["make demo", "make test", ". .venv/bin/activate"])
def test_the_setup_lines_are_in_the_readme(text):
    assert text in README.read_text(encoding="utf-8")
