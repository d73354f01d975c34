"""A plain (non-editable) `pip install .` carries what the quick start needs: the vendored tokenizers.

Slow: it builds a virtualenv (with this machine's site-packages, so no runtime
dependency is downloaded; pip may fetch its build backend), installs the
package into it with a plain `pip install .`, prepares the quick
start from a folder outside the repository, then runs the whole demo with that
environment's Python first on PATH.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_plain_install_runs_the_quick_start_from_another_folder(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(ROOT)],  # a plain install, as a user runs it
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    where = run([str(python), "-c", "import llava, sys; print(llava.__file__)"], cwd=elsewhere, env=env).strip()
    assert Path(where).is_relative_to(venv), f"llava imported from {where}, not the plain install in {venv}"
    shipped = sorted(p.parent.name for p in (Path(where).parent / "demo" / "tokenizers").glob("*/tokenizer.json.xz"))
    assert shipped == ["llama2", "llama3", "mistral", "qwen2"]

    run([str(python), "-m", "llava.demo.prepare", "--work", str(elsewhere / "work")], cwd=elsewhere, env=env)
    assert (elsewhere / "work" / "base" / "llm" / "tokenizer.json").is_file()
    assert (elsewhere / "work" / "base" / "clip" / "config.json").is_file()
    assert (elsewhere / "work" / "data" / "finetune.json").is_file()

    demo_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "WORK": str(tmp_path / "demo")}
    out = run(["bash", "scripts/next/tiny/demo.sh"], cwd=ROOT, env=demo_env, timeout=1500)
    last = out.strip().splitlines()[-1]
    accuracy = float(last.split("accuracy=")[1].split()[0])
    assert last.startswith("demo: accuracy=") and accuracy >= 0.9, last
