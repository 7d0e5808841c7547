"""The run's progress bar: what it shows for each cell."""
import io

from conftest import suite_toml, write_file

from tokenbench.harness.run import RunCache, run_suite
from tokenbench.harness.suite import load_suite

SUITE = suite_toml(
    "bar", "none", {"name": "random", "params": {"keep": 0.5}},
    model={"num_frames": 4, "img_size": 32, "num_classes": 4},
    datasets=({"name": "synthetic", "max_clips": 2, "options": {"num_clips": 4}},))


def test_progress_bar_starts_each_cell_without_the_last_cells_postfix(tmp_path):
    suite = load_suite(write_file(tmp_path, "bar.toml", SUITE))
    stream = io.StringIO()
    summary = run_suite(suite, tmp_path / "results", cache=RunCache(cache_dir=tmp_path), stream=stream)
    assert summary.ran == 2 and summary.failed == 0, summary.failures
    frames = [f for f in stream.getvalue().replace("\r", "\n").splitlines() if "cell 2/2" in f]
    assert frames, stream.getvalue()
    # cell 1 left "timing … repeats" as its postfix; cell 2's first frame must not show it
    assert frames[0].rstrip().endswith("]"), frames[0]
