"""What each built-in suite holds (issue 13): cells per reducer family and dataset, as designed, and a dry run
of every suite through the CLI."""
from __future__ import annotations

import importlib.resources
import tomllib
from collections import Counter

import pytest

from tokenbench.harness.cli import main
from tokenbench.harness.suite import builtin_suites, load_suite

STATIC = ("synthetic-static0", "synthetic-static25", "synthetic-static75", "synthetic-static100")


def _paper_args(tmp_path) -> list[str]:
    ckpt, manifest = tmp_path / "vit.pth", tmp_path / "val.txt"
    ckpt.write_bytes(b"")
    manifest.write_text("a.mp4 0\n")
    return [f"models.checkpoint={ckpt}", f"datasets.manifest={manifest}"]


def _family(c) -> str:
    """rlt, random-match (at RLT's budget), random-keep, tome, sta, none; `[packed]` apart."""
    fam = c.reducer
    if c.reducer == "random":
        fam += "-match" if "match_rlt" in c.params else "-keep"
    return fam + (" [packed]" if c.attn_path == "packed" else "")


def _counts(suite) -> Counter:
    return Counter((c.mode, c.dataset_id or c.dataset, _family(c)) for c in suite.cells())


def _inference(dataset: str, **n: int) -> dict:
    return {("inference", dataset, fam.replace("_", "-").replace("-packed", " [packed]")): k
            for fam, k in n.items()}


# issue 26: the real clips, random at fixed keep ratios and the [packed] pair moved to `full` (whole families)
DEFAULT = {
    **_inference("synthetic", none=1, rlt=4, random_match=4, tome=4, sta=4, temporal=3),
}
FULL = {
    **DEFAULT,
    **_inference("synthetic", none=1, rlt=5, random_match=5, random_keep=4, tome=4, sta=4,
                 rlt_packed=1, random_match_packed=1, temporal=3, spatial=3, compose=2),
    **_inference("samples", none=1, rlt=5, random_match=5, random_keep=4, tome=4, sta=4,
                 rlt_packed=1, random_match_packed=1, temporal=3, spatial=3, compose=2),
    **{k: v for d in STATIC for k, v in _inference(d, rlt=1, random_match=1).items()},
    ("train", "synthetic-val500", "none"): 3, ("train", "synthetic-val500", "rlt"): 6,  # RLT, + length embedding
    ("train", "synthetic-val500", "random-match"): 3, ("train", "synthetic-val500", "rlt_random"): 3,
}
# the bipartite core's block (issue 24): the merge-vs-drop family, dtome and tome with concatenated keys,
# four budgets each on the synthetic val split
FULL_CORE = {("inference", "synthetic", fam): 4
             for fam in ("tome_drop", "random_merge", "random_drop", "tome_hybrid", "dtome")}
FULL_CORE[("inference", "synthetic", "tome")] = 4  # keys = "concat", beside the four above
# issue 25's block: the attention-reading reducers and feature-space pruning at four budgets, both datasets
FULL_ATTN = {("inference", data, fam): 4
             for data in ("synthetic", "samples") for fam in ("vid_tldr", "attn_prune", "feature_diff")}
# PiToMe and ToFu (issue 24, item 4): four budgets each, both datasets
FULL_PITOME = {("inference", data, fam): 4 for data in ("synthetic", "samples") for fam in ("pitome", "tofu")}
PAPER = {("inference", data, fam): k * 2  # ViT-B and ViT-L
         for data in ("k400", "ssv2")
         for fam, k in {"none": 1, "rlt": 5, "random-match": 5, "random-keep": 4, "tome": 4, "sta": 4}.items()}


def test_every_builtin_suite_is_tested_here():
    # gpu: test_gpu_run
    assert set(builtin_suites()) == {"default", "full", "gpu", "packing", "paper-k400", "paper-ssv2"}


def test_packing_suite_times_every_reducer_on_the_papers_shapes():
    """Issue 15's measurement: vit_t and vit_s at 16×224² (random weights: no checkpoint to find), the real
    clips (never noise), batch 8 on 2 threads, random at RLT's budget beside RLT, every cell timed against
    its own interleaved baseline."""
    cells = load_suite("packing", env={}).cells()
    assert len(cells) == 10
    assert {(c.model, c.num_frames, c.img_size, c.checkpoint) for c in cells} == {
        ("vit_t", 16, 224, "none"), ("vit_s", 16, 224, "none")}
    assert {(c.dataset, c.batch_size, c.threads, c.mode) for c in cells} == {("samples", 8, 2, "inference")}
    for model in ("vit_t", "vit_s"):
        assert sorted((c.reducer, tuple(sorted((c.params or {}).items()))) for c in cells if c.model == model) == [
            ("none", ()), ("random", (("match_rlt", 0.1),)), ("rlt", (("threshold", 0.1),)),
            ("sta", (("r", 64),)), ("tome", (("r", 50),))]


def test_default_suite_cells():
    suite = load_suite("default", env={})
    assert dict(_counts(suite)) == DEFAULT
    assert len(suite.cells()) == 20
    cells = suite.cells()
    taus = [0.02, 0.1, 0.2, 0.4]
    for data in ("synthetic",):
        assert sorted(c.params["threshold"] for c in cells if c.reducer == "rlt" and c.mode == "inference"
                      and c.dataset_id is None and c.dataset == data and c.attn_path is None) == taus
        assert sorted(c.params["match_rlt"] for c in cells if _family(c) == "random-match"
                      and c.dataset == data and c.mode == "inference" and c.dataset_id is None) == taus
    assert not [c for c in cells if c.dataset_id in STATIC]  # the static-share sweep is in `full`
    main_data = [c for c in cells if c.dataset == "synthetic" and c.dataset_id is None and c.mode == "inference"]
    assert {c.max_clips for c in main_data} == {700} and all(c.dataset_options is None for c in main_data)
    inf = [c for c in cells if c.mode == "inference"]
    # repeats are not cut to buy time: the speedup's interval is over the 20 paired repeats; a repeat times
    # one batch of 8 clips (8 videos), as on the real clips
    assert {(c.repeats, c.time_clips, c.batch_size) for c in inf} == {(20, 8, 8)}
    assert not [c for c in cells if c.mode == "train"]  # the training comparison is a family of `full`


def test_full_suite_holds_the_default_suite_and_what_left_it():
    default, full = load_suite("default", env={}), load_suite("full", env={})
    extra = Counter(FULL_CORE) + Counter(FULL_ATTN) + Counter(FULL_PITOME)
    assert dict(_counts(full)) == dict(Counter(FULL) + extra)
    assert len(full.cells()) == 89 + sum(extra.values())
    full_keys = {c.key for c in full.cells()}
    for c in default.cells():  # every default cell, as it is
        assert c.key in full_keys, c.label
    static = [c for c in full.cells() if c.dataset_id in STATIC]
    assert {(c.max_clips, c.dataset_options["num_clips"]) for c in static} == {(1000, 1000)}
    assert all(c.mode == "inference" for c in static)
    assert {(c.dataset_id, c.dataset_options["static_share"]) for c in static} == {
        ("synthetic-static0", 0.0), ("synthetic-static25", 0.25), ("synthetic-static75", 0.75),
        ("synthetic-static100", 1.0)}
    assert {c.params.get("threshold", c.params.get("match_rlt")) for c in static} == {0.1}
    train = [c for c in full.cells() if c.mode == "train"]
    assert Counter(c.seed for c in train) == {0: 5, 1: 5, 2: 5}
    assert any(c.params.get("length_embedding") for c in train)


@pytest.mark.parametrize("name", ["paper-k400", "paper-ssv2"])
def test_paper_suite_cells(name, tmp_path):
    suite = load_suite(name, env={}, overrides=_paper_args(tmp_path))
    data = "k400" if name == "paper-k400" else "ssv2"
    assert dict(_counts(suite)) == {k: v for k, v in PAPER.items() if k[1] == data}
    assert len(suite.cells()) == 46
    for model in ("vit_b", "vit_l"):
        assert sorted(c.params["threshold"] for c in suite.cells() if c.reducer == "rlt"
                      and c.model == model) == [0.02, 0.05, 0.1, 0.2, 0.4]


@pytest.mark.parametrize("name, cells", [("default", 20), ("full", 89 + 24 + 24 + 16), ("paper-k400", 46),
                                         ("paper-ssv2", 46)])
def test_dry_run_lists_every_suite(name, cells, tmp_path, capsys):
    sets = [a for s in (_paper_args(tmp_path) if name.startswith("paper") else []) for a in ("--set", s)]
    assert main(["run", "--suite", name, "--dry-run", *sets]) == 0
    cap = capsys.readouterr()
    assert f"suite {name} ({name}.toml (built-in)): {cells} cells" in cap.err  # the summary on stderr
    assert len([ln for ln in cap.out.splitlines() if " inference " in ln or " train " in ln]) == cells


def test_run_help_lists_each_builtin_suite_with_its_description(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    folder = importlib.resources.files("tokenbench.harness.suites")
    for name in builtin_suites():
        desc = tomllib.loads((folder / f"{name}.toml").read_text(encoding="utf-8"))["suite"]["description"]
        assert f" {name} {' '.join(desc.split())}" in out


@pytest.mark.parametrize("name", ["default", "full"])
def test_the_static_share_datasets_build_with_their_options(name):
    """Each static-share entry's options are ones the synthetic dataset takes, and set what they say: a
    few clips of each (not cached), their backgrounds all still at share 1 and never still at share 0."""
    from tokenbench.datasets import get_dataset

    for d in load_suite(name, env={}).datasets:
        if d.id not in STATIC:
            continue
        ds = get_dataset(d.name, d.split, num_frames=8, img_size=112, **{**d.options, "num_clips": 12},
                         cache=False)
        still = [ds[i][2]["background"] == "static" for i in range(len(ds))]
        share = d.options["static_share"]
        assert (all(still) if share == 1.0 else not any(still) if share == 0.0 else 0 < sum(still) < 12), d.id
