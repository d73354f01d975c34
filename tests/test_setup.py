"""Packaging and CI: what `pip install -e ".[train]"` asks for, and what CI and the README run.

setup.py is executed with `setuptools.setup` replaced by a recorder, so the
test reads exactly the requirements pip would see, without installing.
"""

import os
import platform
import runpy
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = 'python -m pytest -q -m "not slow"'


@pytest.fixture(scope="module")
def setup_kwargs():
    recorded = {}
    patch = pytest.MonkeyPatch()
    patch.setattr(setuptools, "setup", lambda **kw: recorded.update(kw))
    patch.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        patch.undo()
    return recorded


def requirements(kwargs):
    reqs = [Requirement(r) for r in kwargs["install_requires"]]
    for extra in kwargs["extras_require"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_torch_is_a_range_that_a_pinned_2_13_satisfies(setup_kwargs):
    (torch,) = [r for r in map(Requirement, setup_kwargs["install_requires"]) if r.name == "torch"]
    assert Version("2.13.0") in torch.specifier
    assert str(torch.specifier) and "==" not in str(torch.specifier)  # a range, never a pin
    assert Version("1.13.0") not in torch.specifier


def test_no_torchvision_and_no_cuda_packages(setup_kwargs):
    names = {r.name.lower() for r in requirements(setup_kwargs)}
    assert not {"torchvision", "torchaudio"} & names
    assert not any(n.startswith("nvidia") for n in names)


def test_extras_train_and_test(setup_kwargs):
    extras = setup_kwargs["extras_require"]
    assert set(extras) >= {"train", "test"}
    train = {Requirement(r).name: Requirement(r) for r in extras["train"]}
    assert set(train) >= {"deepspeed", "peft", "accelerate", "wandb", "bitsandbytes"}
    bnb = train["bitsandbytes"].marker
    assert bnb.evaluate({"platform_system": "Linux", "platform_machine": "x86_64"})
    assert not bnb.evaluate({"platform_system": "Darwin", "platform_machine": "arm64"})
    assert {Requirement(r).name for r in extras["test"]} >= {"pytest"}


def test_ranges_admit_the_installed_releases(setup_kwargs):
    """Today's releases (as installed here) satisfy every range we ask for."""
    checked = 0
    for req in requirements(setup_kwargs):
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            continue
        local = Version(installed).public  # 2.13.0+cpu -> 2.13.0
        assert req.specifier.contains(local, prereleases=True), f"{req} rejects installed {installed}"
        checked += 1
    assert checked >= 10


def ci_install_commands(ci: str) -> list[str]:
    """The pip install lines `.ci/run` runs, as written there."""
    return [line.strip() for line in ci.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]


def test_ci_installs_torch_then_the_package_with_the_test_extra():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci_install_commands(ci) == ["pip install torch==2.13.0", 'DS_BUILD_OPS=0 pip install -e ".[train,test]"']


def test_readme_and_ci_run_the_same_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    for doc in ("README.md", "README_zh.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert TEST_COMMAND in text and "bash scripts/next/tiny/demo.sh" in text, doc
        assert "pip install flash-attn --no-build-isolation" in text, doc
        readme_commands = [line.split("#")[0].strip() for line in text.splitlines()]
        for command in ci_install_commands(ci):  # the README's install is exactly CI's, extras included
            assert command in readme_commands, f"{doc} lacks CI's install command {command!r}"
    lines = [line.strip() for line in ci.splitlines()]
    assert "set -euo pipefail" in lines
    torch_at = lines.index("pip install torch==2.13.0")
    install_at = next(i for i, line in enumerate(lines) if 'pip install -e ".[train,test]"' in line)
    assert torch_at < install_at
    assert any(line.endswith(TEST_COMMAND) for line in lines)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_python_requirement_admits_this_interpreter(setup_kwargs):
    from packaging.specifiers import SpecifierSet

    assert Version(platform.python_version()) in SpecifierSet(setup_kwargs["python_requires"])
