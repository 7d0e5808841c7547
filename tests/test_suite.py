"""Suite files: parsing, expansion into cells, and refusals that name the file and line."""
from __future__ import annotations

import pytest

from tokenbench.harness.schema import CELL_FIELDS, Cell
from tokenbench.harness.suite import (
    SourceMap,
    SuiteError,
    builtin_suites,
    describe,
    load_suite,
    parse_suite,
)

SUITE = """\
[suite]
name = "mini"
description = "a test suite"

[defaults]
modes = ["inference", "train"]
batch_sizes = [1, 4]
repeats = 3
warmup = 1
dtype = "float32"
device = "cpu"

[train]
epochs = 1
batch_size = 8

[[models]]
name = "vit_t"
num_frames = 8
img_size = 64
checkpoint = "none"
num_classes = 6

[[datasets]]
name = "synthetic"
max_clips = 16
options = { num_clips = 32 }

[[datasets]]
name = "samples"

[[reducers]]
name = "none"

[[reducers]]
name = "rlt"
sweep = { threshold = [0.05, 0.1, 0.2] }
modes = ["inference"]

[[reducers]]
name = "tome"
params = { r = 4 }
modes = ["inference"]
datasets = ["synthetic"]

[[reducers]]
name = "rlt"
id = "rlt_len"
params = { threshold = 0.1, length_embedding = true }
modes = ["train"]
"""


def line_of(text: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth]


def parse(text: str = SUITE, **kw):
    return parse_suite(text, "mini.toml", "mini", env=kw.pop("env", {}), **kw)


def test_expansion_covers_the_grid():
    suite = parse()
    cells = suite.cells()
    inf = [c for c in cells if c["mode"] == "inference"]
    train = [c for c in cells if c["mode"] == "train"]
    # inference: synthetic (none + 3 rlt + tome) + samples (none + 3 rlt), × 2 batch sizes
    assert len(inf) == (5 + 4) * 2
    # train: only labelled data (samples is unlabelled), none + rlt with length embedding, train batch size
    assert sorted(c["reducer"] + str(c["params"]) for c in train) == [
        "none{}", "rlt{'threshold': 0.1, 'length_embedding': True}"]
    assert {c["dataset"] for c in train} == {"synthetic"} and {c["batch_size"] for c in train} == {8}
    assert sorted({c["params"]["threshold"] for c in inf if c["reducer"] == "rlt"}) == [0.05, 0.1, 0.2]
    assert {c["batch_size"] for c in inf} == {1, 4}
    assert not [c for c in inf if c["reducer"] == "tome" and c["dataset"] == "samples"]
    assert cells.index(train[0]) > max(cells.index(c) for c in inf)  # inference first


def test_cells_carry_schema_fields_and_stable_unique_keys():
    cells = parse().cells()
    for c in cells:
        assert all(f in c for f in CELL_FIELDS)
        assert c["key"] == Cell.from_dict(dict(c)).key  # recomputed from the JSON shape
        assert c["repeats" if c["mode"] == "inference" else "train"]
    assert len({c["key"] for c in cells}) == len(cells)
    assert [c["key"] for c in parse().cells()] == [c["key"] for c in cells]  # deterministic
    syn = next(c for c in cells if c["dataset"] == "synthetic")
    assert syn["max_clips"] == 16 and syn["dataset_options"] == {"num_clips": 32}
    train = next(c for c in cells if c["mode"] == "train")
    assert train["train"]["epochs"] == 1 and train["train"]["batch_size"] == 8


def test_overrides_and_environment():
    suite = parse(overrides=["defaults.repeats=7", "defaults.batch_sizes=[2]", "train.epochs=2",
                             "models.vit_t.num_frames=16"])
    inf = [c for c in suite.cells() if c["mode"] == "inference"]
    assert {c["repeats"] for c in inf} == {7} and {c["batch_size"] for c in inf} == {2}
    assert {c["num_frames"] for c in suite.cells()} == {16}
    assert {c["train"]["epochs"] for c in suite.cells() if c["mode"] == "train"} == {2}
    text = SUITE.replace('description = "a test suite"', 'description = "${DESC:-fallback}"')
    assert parse(text).description == "fallback"
    assert parse(text, env={"DESC": "from env"}).description == "from env"
    with pytest.raises(SuiteError, match=r"--set defaults.repets=1: unknown key 'repets'.*did you mean 'repeats'"):
        parse(overrides=["defaults.repets=1"])
    with pytest.raises(SuiteError, match=r"--set models.vit_x.checkpoint=/x: no \[\[models\]\] entry 'vit_x'"):
        parse(overrides=["models.vit_x.checkpoint=/x"])


def test_only_selects_cells():
    suite = parse(only=["reducer=rlt", "dataset=samples", "batch_size=4"])
    assert [c["params"]["threshold"] for c in suite.cells()] == [0.05, 0.1, 0.2]
    assert suite.total_cells > len(suite.cells())
    assert "of " in describe(suite)
    with pytest.raises(SuiteError, match="selects none"):
        parse(only=["reducer=sta"])


@pytest.mark.parametrize("bad, good, needle, message", [
    # a typo in a table key
    ("repeats = 3", "repets = 3", "repets = 3", r"unknown key 'repets' in \[defaults\] — did you mean 'repeats'"),
    # a typo in an array-of-tables entry (the third [[reducers]])
    ('params = { r = 4 }', 'parms = { r = 4 }', "parms = ", r"unknown key 'parms'.*did you mean 'params'"),
    # an unknown reducer
    ('name = "tome"', 'name = "tomee"', 'name = "tomee"', r"unknown reducer 'tomee'; available: .*tome"),
    # a parameter the reducer refuses
    ("sweep = { threshold = [0.05, 0.1, 0.2] }", "sweep = { threshold = [0.05, -0.1] }", "sweep = { threshold",
     r"reducer 'rlt'.*threshold"),
    # a parameter impossible on this model's grid (ToMe's r above half the tokens of the last blocks)
    ('params = { r = 4 }', 'params = { r = 40 }', "params = { r = 40 }",
     r"cannot run on vit_t .*token grid \(4, 4, 4\)"),
    # an unknown parameter
    ('params = { r = 4 }', 'params = { rr = 4 }', "params = { rr = 4 }", r"no parameter 'rr'"),
    # an unknown model and dataset
    ('name = "vit_t"', 'name = "vit_tt"', 'name = "vit_tt"', r"unknown model 'vit_tt' — did you mean 'vit_t'"),
    ('name = "samples"', 'name = "sample"', 'name = "sample"', r"unknown dataset 'sample'"),
    # a value of the wrong kind
    ("batch_sizes = [1, 4]", 'batch_sizes = [1, "4"]', "batch_sizes", r"batch_sizes must be an integer"),
    ('modes = ["inference", "train"]', 'modes = ["inference", "trian"]', "modes = [", r"modes must be one of"),
])
def test_refusals_name_the_file_and_line(bad, good, needle, message):
    text = SUITE.replace(bad, good, 1)
    assert text != SUITE
    with pytest.raises(SuiteError, match=message) as exc:
        parse(text)
    assert str(exc.value).startswith(f"mini.toml:{line_of(text, needle)}:"), str(exc.value)


def test_unknown_section_and_invalid_toml_name_the_line():
    text = SUITE + "\n[defautls]\nrepeats = 2\n"
    with pytest.raises(SuiteError, match=r"unknown key 'defautls' in the suite — did you mean 'defaults'") as exc:
        parse(text)
    assert str(exc.value).startswith(f"mini.toml:{line_of(text, '[defautls]')}:")
    broken = SUITE.replace("repeats = 3", "repeats = = 3")
    with pytest.raises(SuiteError, match="not valid TOML") as exc:
        parse(broken)
    assert str(exc.value).startswith(f"mini.toml:{line_of(broken, 'repeats = = 3')}:")


def test_source_map_finds_tables_keys_and_array_entries():
    text = """\
# comment [not a table]
[defaults]
modes = [
  "inference",   # a multi-line array: these lines are not keys
  "train",
]
text = '''a
name = "inside a multi-line string"
'''

[[reducers]]
name = "none"

[[reducers]]
name = "rlt"
params.threshold = 0.1
sweep = { threshold = [0.1, 0.2] }

[[reducers]]
name = "tome"
[reducers.params]
r = 8
"""
    m = SourceMap(text)
    assert m.line(("defaults",)) == 2
    assert m.line(("defaults", "modes")) == 3
    assert m.line(("reducers", 0)) == 11
    assert m.line(("reducers", 1, "name")) == 15
    assert m.line(("reducers", 1, "params", "threshold")) == 16
    assert m.line(("reducers", 1, "sweep", "threshold")) == 17  # inside an inline table: its key's line
    assert m.line(("reducers", 2, "params")) == 21
    assert m.line(("reducers", 2, "params", "r")) == 22
    assert ("name",) not in m.lines and ("defaults", "name") not in m.lines


def test_builtin_suites_parse():
    assert {"default", "full", "paper-k400", "paper-ssv2"} <= set(builtin_suites())
    default = load_suite("default", env={})
    cells = default.cells()
    assert {c["mode"] for c in cells} == {"inference"}  # the training comparison is a family of `full`
    inf_reducers = {c["reducer"] for c in cells if c["mode"] == "inference"}
    assert {"none", "rlt", "random", "tome", "sta", "temporal"} <= inf_reducers
    assert {c["params"]["threshold"] for c in cells if c["reducer"] == "rlt" and c["mode"] == "inference"} == {
        0.02, 0.1, 0.2, 0.4}
    full_train = {c["reducer"] for c in load_suite("full", env={}).cells() if c["mode"] == "train"}
    assert {"none", "rlt", "random", "rlt_random"} <= full_train
    assert all(c["checkpoint"].startswith("trained:") for c in cells)  # the recipe's model (its shipped weights)
    assert {c["dataset"] for c in cells} == {"synthetic"}  # the real clips and the static sweep are in `full`


@pytest.mark.parametrize("name, prefix", [("paper-k400", "K400"), ("paper-ssv2", "SSV2")])
def test_paper_suites_refuse_without_paths_naming_what_is_missing(name, prefix, tmp_path):
    with pytest.raises(SuiteError) as exc:
        load_suite(name, env={})
    msg = str(exc.value)
    for var in (f"TOKENBENCH_{prefix}_VIT_B", f"TOKENBENCH_{prefix}_VIT_L", f"TOKENBENCH_{prefix}_MANIFEST"):
        assert var in msg
    assert "--set models.vit_b.checkpoint=PATH" in msg and "manifest=PATH" in msg
    assert f"{name}.toml" in msg
    # a path that does not exist is named too
    with pytest.raises(SuiteError, match=r"checkpoint '/no/such/vit_b.pth' does not exist"):
        load_suite(name, env={f"TOKENBENCH_{prefix}_VIT_B": "/no/such/vit_b.pth"})
    # with every path given (environment or --set) it expands, ViT-B and ViT-L, 16×224², the paper's views
    ckpt, manifest = tmp_path / "vit.pth", tmp_path / "val.txt"
    ckpt.write_bytes(b"")
    manifest.write_text("a.mp4 0\n")
    suite = load_suite(name, env={f"TOKENBENCH_{prefix}_MANIFEST": str(manifest)},
                       overrides=[f"models.checkpoint={ckpt}"])
    cells = suite.cells()
    assert {c["model"] for c in cells} == {"vit_b", "vit_l"}
    assert {(c["num_frames"], c["img_size"]) for c in cells} == {(16, 224)}
    assert {c["views"] for c in cells} == ({"5x3"} if prefix == "K400" else {"2x3"})
    # one model only: the other's checkpoint is not needed
    only_b = load_suite(name, env={f"TOKENBENCH_{prefix}_MANIFEST": str(manifest),
                                   f"TOKENBENCH_{prefix}_VIT_B": str(ckpt)}, only=["model=vit_b"])
    assert {c["model"] for c in only_b.cells()} == {"vit_b"}


def test_a_model_without_weights_is_refused():
    text = SUITE.replace('checkpoint = "none"\n', "")
    with pytest.raises(SuiteError, match="has no weights") as exc:
        parse(text)
    assert str(exc.value).startswith(f"mini.toml:{line_of(text, '[[models]]')}:")


def test_attn_path_packed_marks_its_cells_and_leaves_other_keys_alone():
    plain = parse()
    text = SUITE.replace('params = { r = 4 }', 'params = { r = 4 }\nattn_path = "packed"', 1)
    suite = parse(text)
    packed = [c for c in suite.cells() if c.attn_path == "packed"]
    assert packed and all(c.reducer == "tome" and c.mode == "inference" and c.label.endswith(" [packed]")
                          for c in packed)
    assert {c.key for c in suite.cells() if c.attn_path is None} <= {c.key for c in plain.cells()}
    assert not {c.key for c in packed} & {c.key for c in plain.cells()}  # a different configuration
    bad = SUITE.replace('params = { r = 4 }', 'params = { r = 4 }\nattn_path = "dense"', 1)
    with pytest.raises(SuiteError, match=r"attn_path must be one of auto, packed") as exc:
        parse(bad)
    assert str(exc.value).startswith(f"mini.toml:{line_of(bad, 'attn_path')}:"), str(exc.value)


def test_train_seeds_repeat_each_train_arm_and_keep_the_first_seeds_key():
    plain = [c for c in parse().cells() if c.mode == "train"]
    text = SUITE.replace("[train]\nepochs = 1\n", "[train]\nepochs = 1\nseeds = 3\n", 1)
    seeded = [c for c in parse(text).cells() if c.mode == "train"]
    assert len(seeded) == 3 * len(plain)
    assert {c.key for c in plain} <= {c.key for c in seeded}  # seed 0: the same cell as without seeds
    assert sorted({c.seed for c in seeded}) == [0, 1, 2] and "seeds" not in seeded[0].train
    assert len({c.key for c in seeded}) == len(seeded)
    with pytest.raises(SuiteError, match="seeds"):
        parse(SUITE.replace("[train]\nepochs = 1\n", "[train]\nepochs = 1\nseeds = 0\n", 1))
