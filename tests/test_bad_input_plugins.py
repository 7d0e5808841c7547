"""Plugins that misbehave on import (issue 16, item 5): real throwaway packages installed with pip, found
through the entry-point group the way tests/test_plugin.py installs the README's plugin."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import suite_toml

PLUGINS = {
    # exits the interpreter on import
    "quitter": ("quit_plugin", "import sys\nsys.exit(3)\n", "Quit"),
    # raises a BaseException that is not an Exception
    "escaper": ("escape_plugin", "class Escape(BaseException):\n    pass\nraise Escape('out of here')\n", "X"),
    # a working reducer that claims a built-in's name
    "rlt": ("fake_rlt", "from dataclasses import dataclass\nfrom tokenbench.reducers import Reducer\n\n\n"
                        "@dataclass(repr=False)\nclass FakeRLT(Reducer):\n    \"\"\"Not RLT.\"\"\"\n", "FakeRLT"),
}

SUITE = suite_toml("plugged", "REDUCER")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-plugins")
    projects = []
    for ep_name, (module, code, obj) in PLUGINS.items():
        proj = root / module
        proj.mkdir()
        (proj / f"{module}.py").write_text(code)
        (proj / "pyproject.toml").write_text(
            f'[project]\nname = "{module.replace("_", "-")}"\nversion = "0.1.0"\n'
            f'[tool.setuptools]\npy-modules = ["{module}"]\n'
            f'[project.entry-points."tokenbench.reducers"]\n{ep_name} = "{module}:{obj}"\n')
        projects.append(str(proj))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), *projects], check=True, capture_output=True, text=True)
    return target


def _tokenbench(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    # the installed command's entry (`python -m tokenbench.harness.cli` runs cli.py as __main__, whose
    # UserError is not the one the library raises)
    main = "import sys; from tokenbench.harness.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", main, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def listing(site, tmp_path_factory) -> subprocess.CompletedProcess:
    """One ``tokenbench list`` with the plugins installed, read by the tests below."""
    return _tokenbench(site, tmp_path_factory.mktemp("list"), "list")


def test_list_reports_a_plugin_that_exits_or_escapes_on_import_and_lists_the_rest(listing):
    out = listing
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^quitter\s+BROKEN: quit_plugin:Quit: called sys\.exit\(3\) while being imported", out.stdout,
                     re.M), out.stdout
    assert re.search(r"^escaper\s+BROKEN: escape_plugin:X: .*Escape: out of here", out.stdout, re.M), out.stdout
    for builtin in ("none", "random", "rlt", "sta", "tome"):
        assert re.search(rf"^{builtin}\s+tokenbench\.reducers\.", out.stdout, re.M), out.stdout


def test_a_plugin_claiming_a_builtin_name_is_reported_and_the_builtin_stays(site, listing):
    out = listing
    assert re.search(r"^rlt\s+tokenbench\.reducers\.rlt:RLT", out.stdout, re.M), out.stdout
    assert re.search(r"^rlt \(fake_rlt:FakeRLT\)\s+BROKEN: claims the name 'rlt', already taken by the built-in "
                     r"tokenbench\.reducers\.rlt:RLT; ignored", out.stdout, re.M), out.stdout
    # resolving the name directly (lazily, without listing first) gives the built-in too
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "from tokenbench.reducers import reducer_class; "
                            "print(reducer_class('rlt').__module__)"], env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "tokenbench.reducers.rlt", probe.stdout + probe.stderr


def test_run_is_not_silenced_by_a_plugin_that_exits_on_import(site, tmp_path):
    suite = tmp_path / "plugged.toml"
    suite.write_text(SUITE.replace("REDUCER", "rlt"))
    out = _tokenbench(site, tmp_path, "run", "--suite", str(suite), "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rlt" in out.stdout and len(out.stdout.strip().splitlines()) == 1  # its one cell listed
    suite.write_text(SUITE.replace("REDUCER", "quitter"))  # asking for the broken plugin itself
    out = _tokenbench(site, tmp_path, "run", "--suite", str(suite), "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "called sys.exit(3) while being imported" in out.stderr and "Traceback" not in out.stderr
