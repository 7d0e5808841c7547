"""Bad suites refused in validation, before any work (issue 16, items 6 and 7): a device this machine lacks,
repeated reducer entries or ids, a ``--set views=0x1`` read as a number, a directory given as the suite.
Each through ``tokenbench run`` (``--dry-run`` too): exit 2, one line naming what is wrong, nothing
written."""
from __future__ import annotations

import pytest
import torch
from conftest import suite_toml

from tokenbench.harness.cli import main
from tokenbench.harness.suite import SuiteError, load_suite, parse_suite
from tokenbench.harness.suite.overrides import parse_value

SUITE = suite_toml("bad")


def _write(tmp_path, text: str = SUITE):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _refused(tmp_path, capsys, suite, *extra: str, dry_run: bool = False) -> str:
    """``tokenbench run`` on ``suite``: exit 2, one stderr line, nothing written under the output roots."""
    out, reports = tmp_path / "results", tmp_path / "reports"
    args = ["run", "--suite", str(suite), "--out", str(out), "--report-dir", str(reports), "--no-progress",
            *extra] + (["--dry-run"] if dry_run else [])
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists() and not reports.exists()
    return lines[0]


# --- defaults.device ------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_cuda_device_on_a_machine_without_cuda_is_refused_in_validation(tmp_path, capsys, device, dry_run):
    suite = _write(tmp_path, SUITE.replace('device = "cpu"', f'device = "{device}"'))
    line = _refused(tmp_path, capsys, suite, dry_run=dry_run)
    assert f"{suite}:11: device = {device!r}, but this machine has no CUDA device" in line, line
    assert "use device = \"auto\" or \"cpu\"" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_given_by_set_is_refused_naming_the_set(tmp_path, capsys):
    line = _refused(tmp_path, capsys, _write(tmp_path), "--set", "defaults.device=cuda:1")
    assert "--set defaults.device=cuda:1: device = 'cuda:1', but this machine has no CUDA device" in line, line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_machines_devices_is_refused(tmp_path):
    n = torch.cuda.device_count()
    with pytest.raises(SuiteError, match=rf"device = 'cuda:{n}', but this machine has {n} CUDA device"):
        parse_suite(SUITE.replace('device = "cpu"', f'device = "cuda:{n}"'), "s.toml")


def test_the_device_check_is_off_where_the_cells_run_elsewhere():
    """Slurm's cells run on its compute nodes: a login node without a GPU may ask for cuda."""
    cells = parse_suite(SUITE.replace('device = "cpu"', 'device = "cuda"'), "s.toml", check_device=False).cells()
    assert {c.device for c in cells} == {"cuda"}


# --- repeated reducers ----------------------------------------------------------------------------
RLT = '\n[[reducers]]\nname = "rlt"\n{extra}\n'


@pytest.mark.parametrize("first,second", [
    ("params = { threshold = 0.2 }", "params = { threshold = 0.2 }"),  # the same entry twice
    ('id = "a"\nparams = { threshold = 0.2 }', 'id = "b"\nparams = { threshold = 0.2 }'),  # under two ids
    ("", "params = { threshold = 0.1 }"),  # the default given once and left out once
    ("sweep = { threshold = [0.1, 0.2] }", "params = { threshold = 0.2 }"),  # a sweep's value again
])
def test_a_reducer_entry_repeating_another_is_refused(tmp_path, capsys, first, second):
    text = SUITE + RLT.format(extra=first) + RLT.format(extra=second)
    line = _refused(tmp_path, capsys, _write(tmp_path, text))
    first_at, second_at = _headers(text)[1:]
    assert f"bad.toml:{second_at}: [[reducers]]" in line and f"(at {tmp_path}/bad.toml:{first_at})" in line, line
    assert "repeats [[reducers]]" in line and "both run 'rlt" in line and "vit_t/samples" in line
    assert "remove one or give them different parameters" in line


def _headers(text: str) -> list[int]:
    """Lines of the suite's [[reducers]] tables."""
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln == "[[reducers]]"]


def test_a_sweep_listing_a_value_twice_is_refused(tmp_path, capsys):
    text = SUITE + RLT.format(extra="sweep = { threshold = [0.1, 0.2, 0.1] }")
    line = _refused(tmp_path, capsys, _write(tmp_path, text))
    sweep_at = text.splitlines().index("sweep = { threshold = [0.1, 0.2, 0.1] }") + 1
    assert f"bad.toml:{sweep_at}: [[reducers]] 'rlt' lists the same parameters twice: 'rlt τ=0.1'" in line, line


def test_two_reducer_entries_with_one_id_are_refused_like_models_and_datasets(tmp_path, capsys):
    """An id given twice; two entries that share a name and give no id (the paper suites' two `tome`
    entries, one per model) stay allowed: they are told apart by parameters and restrictions."""
    text = SUITE + RLT.format(extra='id = "x"\nparams = { threshold = 0.1 }') + RLT.format(
        extra='id = "x"\nparams = { threshold = 0.2 }')
    line = _refused(tmp_path, capsys, _write(tmp_path, text))
    first_at, second_at = _headers(text)[1:]
    assert f"bad.toml:{second_at}: two [[reducers]] entries have id 'x' (the other at {tmp_path}/bad.toml:" \
        f"{first_at}); give each its own id" in line, line


def test_one_reducer_on_two_datasets_through_two_entries_is_not_a_repeat():
    text = SUITE.replace('[[datasets]]\nname = "samples"', '[[datasets]]\nname = "samples"\nid = "s1"') + \
        '\n[[datasets]]\nname = "samples"\nid = "s2"\noptions = { windows = 1, videos = ["bikes"] }\n' + \
        RLT.format(extra='id = "a"\ndatasets = ["s1"]') + RLT.format(extra='id = "b"\ndatasets = ["s2"]')
    cells = parse_suite(text, "s.toml").cells()
    assert sorted((c.reducer, c.dataset_id) for c in cells) == [
        ("none", "s1"), ("none", "s2"), ("rlt", "s1"), ("rlt", "s2")]


# --- --set views ----------------------------------------------------------------------------------
def test_set_views_0x1_is_read_as_clips_by_crops_not_as_a_hexadecimal_number(tmp_path, capsys):
    assert parse_value("0x1") == "0x1" and parse_value("0o17") == "0o17" and parse_value("0b1") == "0b1"
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5  # plain numbers are still numbers
    line = _refused(tmp_path, capsys, _write(tmp_path), "--set", "datasets.samples.views=0x1")
    assert line.endswith("--set datasets.samples.views=0x1: views must read 'CLIPSxCROPS' like '5x3', "
                         "got '0x1'"), line
    suite = load_suite(_write(tmp_path), overrides=["datasets.samples.views=2x3"])
    assert {c.views for c in suite.cells()} == {"2x3"}


def test_a_views_value_that_is_a_number_names_the_expected_form(tmp_path, capsys):
    line = _refused(tmp_path, capsys, _write(tmp_path), "--set", "datasets.views=3")
    assert "--set datasets.views=3: views must read 'CLIPSxCROPS' like '5x3', got 3" in line, line


# --- a directory where a file belongs -------------------------------------------------------------
def test_a_directory_given_as_the_suite_is_called_a_directory(tmp_path, capsys):
    folder = tmp_path / "suites"
    folder.mkdir()
    for given in (str(folder), str(folder) + "/"):
        line = _refused(tmp_path, capsys, given)
        assert f"suite {given!r} is a directory; give a suite .toml file or a built-in suite name" in line, line
        assert "not found" not in line
