"""A reducer from a throwaway package, found through the entry-point group only.

The plugin is the one in the README's "Your own reducer" section and check.py the one in
docs/extending.md, taken from them verbatim, so the documentation cannot drift from what works. It is
installed with pip into a throwaway target folder put on PYTHONPATH (the same entry-point discovery as a
site-packages install, without touching the test environment).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "docs" / "extending.md")  # the files whose titled blocks make the plugin
BLOCK = re.compile(r'```(\w+) title="([^"]+)"\n(.*?)```', re.S)


def readme_files() -> dict[str, str]:
    return {title: body for doc in DOCS for _, title, body in BLOCK.findall(doc.read_text(encoding="utf-8"))}


def _pip_install(project: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(project)], check=True, capture_output=True, text=True)


def _run(args, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    files = readme_files()
    for name in ("my-reducer/my_reducer.py", "my-reducer/pyproject.toml", "check.py"):
        assert name in files, f"README.md / docs/extending.md lost the {name} block"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(files[name])
    site = root / "site"
    _pip_install(root / "my-reducer", site)
    return root, site


def test_readme_plugin_is_listed(installed_plugin):
    root, site = installed_plugin
    out = _run(["-m", "tokenbench.harness.cli", "list"], site, root)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("busiest"))
    assert "my_reducer:Busiest" in line
    assert re.search(r"keep\s+= 0.5\s+fraction of tubelets kept per clip", out.stdout)
    assert "BROKEN" not in out.stdout


def test_readme_plugin_passes_conformance_and_runs_through_model(installed_plugin):
    root, site = installed_plugin
    out = _run(["check.py"], site, root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.Size([2, 400]) [784, 784]"


def test_broken_plugin_is_reported_and_list_still_succeeds(tmp_path):
    pkg = tmp_path / "broken"
    pkg.mkdir()
    (pkg / "broken_plugin.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "broken-plugin"\nversion = "0.1.0"\n'
        '[tool.setuptools]\npy-modules = ["broken_plugin"]\n'
        '[project.entry-points."tokenbench.reducers"]\nbroken = "broken_plugin:Nope"\n'
    )
    site = tmp_path / "site"
    _pip_install(pkg, site)
    out = _run(["-m", "tokenbench.harness.cli", "list"], site, tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"broken\s+BROKEN: broken_plugin:Nope: ImportError: needs libfoo", out.stdout)
    assert re.search(r"^none\s", out.stdout, re.M) and re.search(r"^random\s", out.stdout, re.M)
    # asking for the broken one by name says why, instead of "unknown"
    code = ("from tokenbench.reducers import get_reducer\ntry:\n    get_reducer('broken')\n"
            "except Exception as e:\n    print(e)")
    out = _run(["-c", code], site, tmp_path)
    assert "installed but failed to load" in out.stdout and "needs libfoo" in out.stdout
