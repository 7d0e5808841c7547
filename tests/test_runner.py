"""The runner end to end on a tiny suite: real model, real clips, real results files, real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
from conftest import PRETRAINED, suite_toml, write_file

from tokenbench.harness import cpu_varlen
from tokenbench.harness.results import ResultStore, TornLineWarning, load
from tokenbench.harness.run import RunCache, pretrained_path, run_cell, run_suite
from tokenbench.harness.schema import CELL_FIELDS
from tokenbench.harness.suite import load_suite

# the path a packed batch takes on this CPU: the cpu_varlen op (one call a layer), else the sdpa loop
PACKED = "varlen" if cpu_varlen.available() else "packed"

TINY = suite_toml(
    "tiny", "none", {"name": "rlt", "params": {"threshold": 0.1}},
    *({"name": name, "params": params, "modes": ["inference"], "datasets": ["synthetic"]}
      for name, params in (("random", {"match_rlt": 0.1}), ("tome", {"r": 2}), ("sta", {"r": 2}))),
    defaults={"modes": ["inference", "train"], "batch_sizes": [4], "repeats": 2, "time_clips": 4},
    train={"epochs": 1, "batch_size": 8, "max_clips": 16, "warmup_epochs": 0},
    model={**PRETRAINED, "pretrain": {**PRETRAINED["pretrain"], "options": {"num_clips": 16}}},
    datasets=({"name": "synthetic", "max_clips": 8, "options": {"num_clips": 16}},
              {"name": "samples", "options": {"windows": 1}}))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One TOKENBENCH_CACHE for the module: synthetic clips and the self-trained model are made once."""
    path = tmp_path_factory.mktemp("tokenbench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENBENCH_CACHE", str(path))
        yield path


write = write_file  # (folder, name, text) -> path


def test_tiny_suite_end_to_end_and_second_run_skips_everything(tmp_path, cache_dir):
    suite = load_suite(write(tmp_path, "tiny.toml", TINY))
    cells = suite.cells()
    assert len(cells) == 9  # synthetic: 5 inference + 2 train (none, rlt); samples (unlabelled): 2 inference
    out = tmp_path / "results"
    cache = RunCache(cache_dir=cache_dir)
    summary = run_suite(suite, out, command="pytest", cache=cache, show_progress=False)
    assert summary.ran == len(cells) and summary.failed == 0, summary.failures
    ckpt = pretrained_path(cells[0]["pretrain"], cache_dir)
    assert ckpt.is_file()  # trained once, cached by its configuration

    store = summary.store
    assert store.parent.parent == out / "tiny"  # results/<suite>/<fingerprint>/records.jsonl
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    assert [r["key"] for r in recs] == [c["key"] for c in cells]
    for r in recs:
        assert r["status"] == "ok" and r["error"] is None
        assert all(f in r["cell"] for f in CELL_FIELDS)
        fp = r["fingerprint"]
        assert fp["id"] == store.parent.name and fp["threads"] == 1 and fp["torch"] and fp["git_commit"]
        m = r["metrics"]
        # the backend that ran: the CPU op where lengths differ (RLT, here), one dense sdpa call where equal
        packed = m.get("attn_path") == "varlen" or (r["cell"]["mode"] == "train" and r["cell"]["reducer"] == "rlt")
        want = "cpu_varlen" if packed and cpu_varlen.available() else "sdpa"
        assert fp["dtype"] == "float32" and fp["attn_backend"] == want and "decoder" in fp
        assert len(m["tokens_per_layer"]) == 12 and m["tokens_total"] == 64
        assert m["load_avg_start"] >= 0 and m["load_avg_end"] >= 0  # how busy the machine was
        assert m["num_clips"] == len(m["tokens_per_clip"])
        if r["cell"]["dataset"] == "synthetic":
            assert 0 <= m["top1"] <= 100 and 0 <= m["top5"] <= 100 and m["views"] == "1x1"
        if r["cell"]["mode"] == "inference":
            assert m["gflops"] > 0 and m["time_ms_median"] > 0 and m["clips_per_s"] > 0 and m["speedup"] > 0
            assert m["repeats"] == 2 and m["decode_ms_per_clip"] >= 0
            # the analytic count (used for every clip) agrees with fvcore (attention handles) on the sample
            assert abs(m["gflops_fvcore"] - m["gflops_fvcore_analytic"]) <= 0.01 * m["gflops_fvcore"]
        else:
            assert m["train_wall_s"] > 0 and m["train_epochs"] == 1 and "top1" in m
    by = {(r["cell"]["mode"], r["cell"]["dataset"], r["cell"]["reducer"]): r for r in recs}
    none, rlt = by[("inference", "synthetic", "none")], by[("inference", "synthetic", "rlt")]
    assert none["metrics"]["top1_baseline"] == none["metrics"]["top1"]
    # the none cell is timed against itself (A/A), not typed in as 1.00
    nm = none["metrics"]
    assert nm["baseline_time_ms_median"] != nm["time_ms_median"] or nm["speedup"] == 1.0
    assert nm["speedup_ci_lo"] <= nm["speedup"] <= nm["speedup_ci_hi"]
    assert nm["delta_top1_ci_lo"] == nm["delta_top1_ci_hi"] == 0.0  # against itself: the same videos agree
    for r in recs:
        m = r["metrics"]
        if r["cell"]["mode"] == "inference":
            assert m["attn_path"] in ("dense", PACKED) and m["baseline_attn_path"] == "dense"
            assert m["time_clips"] == 4 and m["time_tokens_in_mean"] > 0 and m["time_gflops"] > 0
        if r["cell"]["dataset"] == "synthetic":
            assert m["top1_ci_lo"] <= m["top1"] <= m["top1_ci_hi"]
        if r["cell"]["dataset"] == "synthetic" and r["cell"]["mode"] == "inference":
            assert m["delta_top1_ci_lo"] <= m["top1"] - m["top1_baseline"] <= m["delta_top1_ci_hi"]
    assert rlt["metrics"]["attn_path"] == PACKED  # content-adaptive lengths: the packed path
    # the timed clips' own tokens: the mean of 4 of the 8 clips counted (which 4: the seeded sample)
    import itertools
    per_clip = rlt["metrics"]["tokens_per_clip"]
    assert any(sum(c) / 4 == pytest.approx(rlt["metrics"]["time_tokens_in_mean"])
               for c in itertools.combinations(per_clip, 4))
    # the timed clips are a sample over the 8 videos (1 view each), not the first 4
    assert none["metrics"]["time_videos"] == 4
    assert rlt["metrics"]["top1_baseline"] == none["metrics"]["top1"]  # same model, same clips, no reducer
    assert rlt["metrics"]["tokens_in_mean"] < 64 and rlt["metrics"]["gflops"] < none["metrics"]["gflops"]
    # random masking calibrated to RLT's budget on the same clips
    rnd = by[("inference", "synthetic", "random")]["metrics"]
    assert rnd["reducer_params_used"]["keep"] == pytest.approx(rlt["metrics"]["tokens_in_mean"] / 64, abs=0.02)
    tome = by[("inference", "synthetic", "tome")]["metrics"]
    assert tome["tokens_per_layer"][-1] < 64  # progressive
    # ToMe's own similarity matmuls are counted (measured by fvcore, added to every clip); RLT has none in-block
    assert tome["gflops_reducer_overhead"] > 0 and rlt["metrics"]["gflops_reducer_overhead"] == 0
    assert by[("inference", "samples", "none")]["fingerprint"]["decoder"] in ("pyav", "torchcodec")
    assert "top1" not in by[("inference", "samples", "none")]["metrics"]  # unlabelled

    df = load(out)
    assert len(df) == len(cells) and set(df["status"]) == {"ok"}

    # the same suite again: every cell is recorded, nothing runs
    t0 = time.perf_counter()
    again = run_suite(load_suite(tmp_path / "tiny.toml"), out, cache=RunCache(cache_dir=cache_dir),
                      show_progress=False)
    assert again.ran == 0 and again.skipped == len(cells)
    assert time.perf_counter() - t0 < 10
    assert len(store.read_text().splitlines()) == len(cells)


KILL = suite_toml(
    "killme", "none", {"name": "rlt", "sweep": {"threshold": [0.02, 0.05, 0.1, 0.2]}},
    {"name": "tome", "params": {"r": 2}},
    defaults={"modes": None, "repeats": 2, "time_clips": 4},
    datasets=({"name": "samples", "options": {"windows": 1}},))


def _run_cli(args, cache_dir, **kw):
    env = {**os.environ, "TOKENBENCH_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tokenbench.harness.cli", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_mid_suite_then_resume_loses_and_repeats_nothing(tmp_path, cache_dir):
    suite_file = write(tmp_path, "killme.toml", KILL)
    total = len(load_suite(suite_file).cells())
    assert total == 6
    out = tmp_path / "results"
    args = ["--suite", str(suite_file), "--out", str(out), "--no-report", "--no-progress"]
    proc = _run_cli(args, cache_dir)
    deadline = time.time() + 120
    records = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("killme/*/records.jsonl"))
        if found and found[0].read_bytes().count(b"\n") >= 2:
            records = found[0]
            break
        time.sleep(0.05)
    assert records is not None, proc.communicate()[0][-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: as a crash or an OOM kill
    proc.wait(30)
    before = records.read_bytes()
    done_before = [json.loads(line)["key"] for line in before.decode().splitlines() if line.endswith("}")]
    assert 2 <= len(done_before) < total, "the suite finished before it could be killed; make its cells slower"
    # and as if the kill had landed mid-write: a torn last line
    with open(records, "ab") as f:
        f.write(b'{"schema": 1, "key": "torn-line-from-a-kill", "cell": {"mod')

    proc = _run_cli(args, cache_dir)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    assert "dropped a torn last line" in log
    assert f"{total - len(done_before)} of {total} cells to run" in log
    after = records.read_bytes()
    lines = after.decode().splitlines()
    keys = [json.loads(line)["key"] for line in lines]  # every line parses
    assert after.startswith(before[: before.rfind(b"\n") + 1])  # finished records untouched
    assert len(keys) == total == len(set(keys))  # none lost, none recomputed
    assert set(keys) == {c["key"] for c in load_suite(suite_file).cells()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornLineWarning)
        assert set(load(records)["status"]) == {"ok"}

    # a third run: nothing left to do, finishes in seconds
    t0 = time.perf_counter()
    proc = _run_cli(args, cache_dir)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "nothing to run" in log, log[-2000:]
    assert time.perf_counter() - t0 < 30
    assert records.read_bytes() == after


CORRUPT = suite_toml(
    "corrupt", "none", {"name": "rlt", "params": {"threshold": 0.1}}, defaults={"modes": None},
    datasets=({"id": "mine", "name": "manifest", "manifest": "MANIFEST"},
              {"name": "samples", "options": {"windows": 1, "videos": ["bikes", "carphone_distorted"]}}))


def test_a_corrupt_video_fails_its_cells_naming_the_file_and_the_rest_go_on(tmp_path):
    from tokenbench.datasets import sample_paths

    good = sample_paths()["bikes"]
    bad = tmp_path / "videos" / "truncated.mp4"
    bad.parent.mkdir()
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # cut mid-stream, as an interrupted download
    manifest = tmp_path / "val.txt"
    manifest.write_text(f"{good} 0\nvideos/truncated.mp4 1\n")
    suite = load_suite(write(tmp_path, "corrupt.toml", CORRUPT.replace("MANIFEST", str(manifest))))
    out = tmp_path / "results"
    summary = run_suite(suite, out, show_progress=False)
    recs = load(out)
    assert len(recs) == 4 and summary.failed == 2
    failed = recs[recs["status"] == "failed"]
    assert set(failed["dataset_id"]) == {"mine"}
    for err in failed["error"]:
        assert str(bad) in err and "line 2" in err and str(manifest) in err
    ok = recs[recs["status"] == "ok"]
    assert set(ok["dataset"]) == {"samples"} and ok["gflops"].notna().all()
    raw = [json.loads(line) for line in summary.store.read_text().splitlines()]
    assert all("traceback" in r for r in raw if r["status"] == "failed")
    # a failed cell is finished: skipped next time unless asked to retry
    assert run_suite(suite, out, show_progress=False).ran == 0
    assert run_suite(suite, out, show_progress=False, retry_failed=True).ran == 2

    # or the suite leaves unreadable videos out, counting and naming them in every record
    tolerant = load_suite(write(tmp_path, "tolerant.toml", CORRUPT.replace("MANIFEST", str(manifest)).replace(
        'manifest = "', 'skip_unreadable = true\nmanifest = "')), only=["dataset=mine"])
    out2 = tmp_path / "results2"
    summary = run_suite(tolerant, out2, show_progress=False)
    assert summary.ran == 2 and summary.failed == 0
    for _, row in load(out2).iterrows():
        assert row["skipped_videos"] == 1 and str(bad) in row["skipped_errors"][0]
        assert row["num_clips"] == 1 and row["top1"] is not None


def test_run_cell_records_any_exception_as_failed(tmp_path):
    cell = load_suite(write(tmp_path, "k.toml", KILL)).cells()[0]
    cell = {**cell, "model": "vit_t", "dataset_options": {"videos": ["no_such_video"]}}
    rec = run_cell(cell, suite="x")
    assert rec["status"] == "failed" and "no_such_video" in rec["error"]
    assert rec["cell"]["dataset_options"] == {"videos": ["no_such_video"]} and rec["key"] == cell["key"]
    assert rec["fingerprint"]["id"] and rec["metrics"] == {}
    ResultStore(tmp_path / "r.jsonl").append(rec)  # and it is a valid record


def test_a_model_that_fails_to_train_fails_its_cells_once_each_without_retraining(tmp_path, cache_dir):
    text = KILL.replace('checkpoint = "none"', 'pretrain = { dataset = "synthetic", options = { num_clips = 4 }, '
                                                'epochs = 1, batch_size = 8 }')
    suite = load_suite(write(tmp_path, "untrainable.toml", text), only=["batch_size=2", "reducer=rlt"])
    cache = RunCache(cache_dir=cache_dir)
    summary = run_suite(suite, tmp_path / "results", cache=cache, show_progress=False)
    assert summary.ran == summary.failed == 4
    errors = list(load(tmp_path / "results")["error"])
    assert all("no full batch" in e for e in errors)  # train()'s own message, on every cell
    assert len(cache.pretrain_failures) == 1 and all("failed earlier in this run" in e for e in errors)


def test_a_pretraining_that_ends_at_chance_says_so(tmp_path, cache_dir):
    """Two steps on 16 clips learn nothing: the run says the model is at chance and how to get another."""
    from tokenbench.harness.run.models import ensure_pretrained

    pre = load_suite(write(tmp_path, "tiny.toml", TINY)).cells()[0]["pretrain"]
    pre = {**pre, "seed": 1}  # not the model the tiny suite trained: trained here, on the clips it made
    lines: list[str] = []
    with pytest.warns(UserWarning, match=r"ended near chance .*chance ln 4 = 1\.386"):
        path = ensure_pretrained(pre, cache_dir, log=lines.append)
    assert path.is_file() and any(line.startswith("WARNING: pretraining vit_t") and str(path) in line
                                  for line in lines)


def test_timing_sample_is_seeded_and_spread_over_videos():
    from tokenbench.harness.run.clips import timing_sample

    videos = [v for v in range(6) for _ in range(15)]  # 6 videos × 15 views, in video order
    picked = timing_sample(videos, 16, seed=0)
    assert len(set(picked)) == 16 and picked == timing_sample(videos, 16, seed=0)
    per_video = [sum(videos[i] == v for i in picked) for v in range(6)]
    assert max(per_video) - min(per_video) <= 1  # round-robin: 16 over 6 videos is 3 or 2 each
    assert picked != list(range(16))  # never the first N views
    assert timing_sample(videos, 16, seed=1) != picked
    assert timing_sample(videos[:10], 16) == list(range(10))  # fewer clips than asked: all of them


def test_a_train_split_limited_to_n_clips_makes_only_those(tmp_path, monkeypatch):
    """A fine-tune over N clips of a generated split renders N clips (the scenes the whole split starts
    with, balanced labels); a format that makes no clips is cut after it is built; the suite's options win."""
    import numpy as np

    from tokenbench.harness.run.clips import first_items

    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))
    kw = {"num_frames": 8, "img_size": 64}
    head = first_items("synthetic", "train", 6, **kw)
    assert len(head) == 6 and [p.name.split("-")[2] for p in tmp_path.glob("synthetic-train-*")] == ["6x8x64"]
    whole = first_items("synthetic", "train", 0, options={"num_clips": 10}, **kw)
    assert len(whole) == 10 and all(head.scene(i) == whole.scene(i) for i in range(6))
    assert np.bincount(head.labels, minlength=4).tolist() == [2, 2, 1, 1]  # balanced over the 6
    assert len(first_items("synthetic", "train", 6, options={"num_clips": 10}, **kw)) == 6  # 10 made, 6 used
    samples = first_items("samples", "val", 3, **kw)
    assert len(samples) == 3 and samples.name == "samples"


AA = suite_toml(
    "aa", "none", {"name": "rlt", "params": {"threshold": 0.1}},
    {"name": "random", "params": {"match_rlt": 0.1}, "attn_path": "packed"},
    defaults={"modes": None, "repeats": 3, "warmup": 1},
    datasets=({"name": "samples", "options": {"windows": 1, "videos": ["bikes", "carphone_distorted"]}},))


def test_tokenbench_run_measures_the_aa_control_records_paths_and_re_measures_stale_cells(tmp_path, cache_dir):
    """Through ``tokenbench run``: vit_t with random weights on the bundled real clips. The none row's
    speedup is a measured A/A (an interval around it), each arm's attention path is recorded, and cells
    recorded at another commit are counted, kept, and measured again with --rerun-stale."""
    suite_file = write(tmp_path, "aa.toml", AA)
    out, reports = tmp_path / "results", tmp_path / "reports"
    args = ["--suite", str(suite_file), "--out", str(out), "--report-dir", str(reports), "--no-progress"]
    proc = _run_cli(args, cache_dir)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    records = next(out.glob("aa/*/records.jsonl"))
    recs = {json.loads(line)["cell"]["reducer"]: json.loads(line) for line in records.read_text().splitlines()}
    none, rlt, rnd = (recs[k]["metrics"] for k in ("none", "rlt", "random"))
    assert none["speedup_ci_lo"] <= none["speedup"] <= none["speedup_ci_hi"]  # measured, not typed in
    assert none["baseline_time_ms_median"] > 0 and none["attn_path"] == none["baseline_attn_path"] == "dense"
    assert "while timed" in recs["none"]["fingerprint"]["timing_allocator"] or \
        "not glibc" in recs["none"]["fingerprint"]["timing_allocator"]  # what the timing did to the heap
    assert rlt["attn_path"] == PACKED and rlt["baseline_attn_path"] == "dense"
    # attn_path = "packed": both arms on the packed path, though random's lengths are equal
    assert rnd["attn_path"] == rnd["baseline_attn_path"] == PACKED
    assert recs["random"]["cell"]["attn_path"] == "packed" and "attn_path" not in recs["rlt"]["cell"]
    md = (reports / "aa" / "tables" / "inference.md").read_text(encoding="utf-8")
    assert "attention path" in md and "random match_rlt=0.1 [packed]" in md and "code: measured at commit" in md

    # the records as if measured at another commit: counted and kept, then measured again on request
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    for rec in lines:
        rec["fingerprint"]["git_commit"] = "0" * 40
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    proc = _run_cli(args + ["--no-report"], cache_dir)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "3 recorded cell(s) were measured at another commit" in log, log[-2000:]
    assert "--rerun-stale" in log and len(records.read_text().splitlines()) == 3
    proc = _run_cli(args + ["--no-report", "--rerun-stale"], cache_dir)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "were measured again" in log, log[-2000:]
    newest = [json.loads(line) for line in records.read_text().splitlines()][3:]
    assert len(newest) == 3 and all(r["fingerprint"]["git_commit"] != "0" * 40 for r in newest)


def test_a_streamed_clip_set_keeps_a_head_spread_over_the_videos(monkeypatch):
    from tokenbench.harness.run import clips as run_clips
    from tokenbench.harness.schema import Cell

    assert run_clips.head_positions(100, 4, seed=0) == run_clips.head_positions(100, 4, seed=0)
    pos = run_clips.head_positions(100, 4, seed=3)
    assert len(pos) == 4 and all(25 * k <= p < 25 * (k + 1) for k, p in enumerate(pos))  # one per quarter
    assert run_clips.head_positions(3, 8) == [0, 1, 2]
    monkeypatch.setattr(run_clips, "IN_MEMORY_BUDGET_BYTES", 1)  # every set streams
    cell = Cell(model="vit_t", dataset="samples", num_frames=8, img_size=32, dataset_options={"windows": 2},
                time_clips=2, batch_size=2)
    cs = run_clips.load_clipset(cell, RunCache())
    assert cs.streaming and len(cs) == 8 and cs.clips.shape[0] == 2
    assert len(set(cs.paths)) == 2  # two videos, not the two windows of the first one
