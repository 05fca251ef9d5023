"""Every Python block of README.md runs as written, with its training budget shrunk (or is marked an excerpt).

The blocks are read from README.md itself, so the check cannot drift from it. Each block runs in a fresh
interpreter in a temporary folder, after a preamble that caps ``IRIS.learn(total_timesteps)`` at one epoch of
collection: the code, the arguments and the defaults are the README's, only the length of training differs. A block
whose first line is a comment starting with ``# Excerpt`` is not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

PREAMBLE = """
import torch
from sb3_iris import IRIS

torch.set_num_threads(1)
_learn = IRIS.learn


def _shrunk_learn(self, total_timesteps, *args, **kwargs):
    # The README's budget, shrunk to one epoch of collection (and whatever training that epoch does).
    return _learn(self, min(int(total_timesteps), self.n_steps_per_epoch), *args, **kwargs)


IRIS.learn = _shrunk_learn
"""


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of the README."""
    text = README.read_text()
    return [(text[: match.start()].count("\n") + 1, match.group(1)) for match in BLOCK.finditer(text)]


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=[f"line{line}" for line, _ in python_blocks()])
def test_readme_block_runs(line, code, tmp_path):
    if code.lstrip().lower().startswith("# excerpt"):
        pytest.skip(f"README.md line {line}: marked as an excerpt")
    if "sb3_iris.atari" in code:
        pytest.importorskip("ale_py")
    script = tmp_path / "block.py"
    script.write_text(PREAMBLE + "\n# ---- README.md, line " + str(line) + "\n" + code)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg", SDL_VIDEODRIVER="dummy")
    env["PYTHONPATH"] = os.pathsep.join([str(README.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, f"README.md line {line}:\n{code}\n{(result.stdout + result.stderr)[-4000:]}"
