"""``tokenbench run --add-reducer``: a reducer entry, with a sweep, added to any suite from the command line
(harness/suite/added.py), validated before any work like the file's own entries, run end to end."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from conftest import suite_toml

from tokenbench.harness.cli import main
from tokenbench.harness.suite import load_suite
from tokenbench.harness.suite.added import reducer_entry
from tokenbench.reducers import Reducer, Selection, register_reducer
from tokenbench.reducers.base import VIDEOMAE, Geometry

SUITE = suite_toml("added", defaults={"flops_check_clips": 1})


@register_reducer("test_first_cells")
@dataclass(repr=False)
class FirstCells(Reducer):
    """A plugin's reducer: keep the first ``keep`` share of each time step's cells (raster order)."""

    keep: float = field(default=0.5, metadata={"help": "share of each time step's cells kept"})

    def select(self, video: torch.Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        t, h, w = geometry.grid(video)
        n = max(1, round(self.keep * h * w))
        keep = torch.zeros(video.shape[0], t, h * w, dtype=torch.bool)
        keep[:, :, :n] = True
        keep = keep.view(video.shape[0], t, h, w)
        return Selection(keep=keep, lengths=keep.long())


def test_a_spec_reads_as_a_reducers_entry():
    assert reducer_entry("my_reducer") == {"name": "my_reducer"}
    assert reducer_entry("my_reducer:sweep.keep=0.9,0.75,0.5 seed=3 label=mine") == {
        "name": "my_reducer", "sweep": {"keep": [0.9, 0.75, 0.5]}, "params": {"seed": 3}, "label": "mine"}
    assert reducer_entry('compose:stages=["rlt", { name = "tome" }] sweep.stages.tome.params.r=[2, 4]') == {
        "name": "compose", "params": {"stages": ["rlt", {"name": "tome"}]}, "sweep": {"stages.tome.params.r": [2, 4]}}
    assert reducer_entry("x:params.label=a")["params"] == {"label": "a"}


def test_added_entries_are_validated_before_any_work_naming_the_flag(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(SUITE)
    out = tmp_path / "results"
    for spec, why in (("test_first_cells:kep=0.5", "has no parameter 'kep'"),
                      ("no_such_reducer", "unknown reducer 'no_such_reducer'"),
                      ("test_first_cells:keep", "'keep' is not KEY=VALUE")):
        assert main(["run", "--suite", str(tmp_path / "s.toml"), "--out", str(out), "--add-reducer", spec]) == 2
        err = capsys.readouterr().err
        assert f"--add-reducer {spec!r}" in err and why in err
    assert not out.exists()  # refused before any work
    suite = load_suite(str(tmp_path / "s.toml"), env={}, add_reducers=["test_first_cells:sweep.keep=0.75,0.5"])
    assert [c.label for c in suite.cells()] == ["none", "test_first_cells keep=0.75", "test_first_cells keep=0.5"]


@pytest.mark.slow  # four real cells (a few seconds)
def test_a_registered_plugin_and_a_composition_added_from_the_command_line_run_end_to_end(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    out = tmp_path / "results"
    assert main(["run", "--suite", str(tmp_path / "s.toml"), "--out", str(out), "--no-report", "--no-progress",
                 "--add-reducer", "test_first_cells:sweep.keep=0.75,0.5",
                 "--add-reducer", 'compose:stages=["spatial", { name = "tome", params = { r = 2 } }]']) == 0
    recs = [json.loads(line) for f in out.rglob("records.jsonl") for line in f.read_text().splitlines()]
    by_label = {r["cell"]["label"]: r for r in recs}
    assert set(by_label) == {"none", "test_first_cells keep=0.75", "test_first_cells keep=0.5",
                             "compose spatial → tome r=2"}
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    assert by_label["test_first_cells keep=0.5"]["metrics"]["tokens_per_clip"] == [32]  # 4 steps × 8 cells
    comp = by_label["compose spatial → tome r=2"]
    assert comp["metrics"]["tokens_per_clip"] == [16]  # 4 steps × 4 cells, then ToMe in the blocks
    used = comp["metrics"]["reducer_params_used"]["stages"]  # every stage with all its parameters
    assert used[0] == {"name": "spatial", "params": {"stride": 2, "scale": None}} and used[1]["params"]["r"] == 2


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
