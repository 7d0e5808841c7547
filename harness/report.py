"""``tokenbench report``: paper-style tables, figures and a README, rebuilt from result records alone.

Command line::

    tokenbench report [RESULTS ...] [--out DIR] [--check] [--no-figures]

* ``RESULTS``: records.jsonl files or folders searched recursively (``results/``, ``results/default``,
  ``results/default/<fingerprint>``); default ``results``.
* ``--out DIR`` (default ``reports``): each suite found gets ``DIR/<suite>/``::

      README.md                        provenance, every table inline, figure links, failed cells
      tables/<table>.{md,csv,tex}      inference, training, tokens, rlt_threshold_sweep
      figures/<figure>.{png,svg}       accuracy_vs_throughput, gflops_vs_time, token_distribution,
                                       tokens_per_layer, rlt_threshold_sweep

  Tables and figures that carry timings (inference, training, rlt_threshold_sweep; accuracy vs
  throughput, GFLOPs vs time, the sweep figure) are made once per hardware fingerprint: when a suite's
  records come from more than one fingerprint their names end in ``__<fingerprint id>``
  (``tables/inference__cpu-….md``) and the README gives each its own section. Timings from two
  fingerprints never share a column. Token counts do not depend on hardware: the tokens table and the
  token figures span fingerprints.
* ``--check``: write nothing; regenerate the tables and README in a temporary folder and compare them
  byte for byte with those under ``--out``; also check that every figure the records support exists
  (PNG and SVG). Prints each stale, missing or no-longer-generated file and exits 1; exits 0 when the
  committed report is current. CI runs, from the repository root::

      tokenbench report results/reference --out reports/reference --check

  Figures are not compared byte for byte (PNG rasterisation differs across machines); SVGs are
  deterministic for a given matplotlib (fixed ``svg.hashsalt``, no date).
* ``--no-figures``: tables and README only (the README still names the figure files).

Determinism: the same records give byte-identical Markdown, CSV, LaTeX and README (stable sort order,
fixed number formats, no generation time; the README's regenerate command is derived from the results'
location relative to the current directory, not from how the command was typed).

Python API (the runner calls these at the end of ``tokenbench run``)::

    write_report(results_dir_or_paths, out_dir, figures=True) -> ReportPaths
    check_report(results_dir_or_paths, out_dir) -> list[str]      # stale files; [] when current
    headline_table(df) -> str          # compact inference table(s) for the terminal, df from results.load
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import report_figures as figs
from . import report_tables as tabs
from .paths import WrittenFiles, distinct_names, inside, safe_name
from .report_tables import MISSING, Table, md_escape, records_from_frame

__all__ = ["ReportPaths", "write_report", "check_report", "headline_table", "add_cli"]

TABLE_EXTS = (".md", ".csv", ".tex")
FIGURE_EXTS = (".png", ".svg")


@dataclass
class ReportPaths:
    """What :func:`write_report` wrote (paths under ``out_dir``)."""

    out_dir: Path
    readmes: list[Path] = field(default_factory=list)       # one per suite
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    skipped_figures: list[str] = field(default_factory=list)  # "suite: title — reason"
    failed_cells: int = 0

    def all(self) -> list[Path]:
        return self.readmes + self.tables + self.figures


# ----------------------------------------------------------------------------------------------------
# loading


def _load(paths) -> tuple[list[dict], dict[str, list[Path]]]:
    """Records (dicts, see report_tables) of every records file named, and the folders each suite came
    from (``results/<suite>`` for files in the standard layout)."""
    import pandas as pd

    from .results import find_record_files, load, safe_component

    files = find_record_files(paths)
    frames, sources = [], {}
    for f in files:
        df = load(f)
        if len(df):
            frames.append(df)
            for suite in sorted({str(s) if s is not None else "unnamed" for s in df["suite"]}):
                # results/<suite>/<fp>/records.jsonl -> results/<suite>; any other file: itself
                d = f.parent.parent if f.parent.parent.name == safe_component(suite) else f
                sources.setdefault(suite, [])
                if d not in sources[suite]:
                    sources[suite].append(d)
    if not frames:
        return [], {}
    return records_from_frame(pd.concat(frames, ignore_index=True)), sources


def _rel(p: Path | str) -> str:
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return p.as_posix()


# ----------------------------------------------------------------------------------------------------
# building one suite's report


@dataclass
class SuiteReport:
    suite: str
    texts: dict[str, str]                       # relative path -> content (tables and README)
    tables: list[tuple[str, Table]]             # (file stem, table)
    plan: figs.FigurePlan
    failed: list[dict]


def _table_stem(table: Table, several: bool) -> str:
    return table.name + (f"__{figs.slug(table.fingerprint)}" if several and table.fingerprint else "")


def build_suite(suite: str, records: list[dict], regenerate: str) -> SuiteReport:
    ok, failed = tabs.dedupe(records)
    fps = sorted({r["fingerprint"] for r in ok})
    several = len(fps) > 1
    by_fp = {fp: [r for r in ok if r["fingerprint"] == fp] for fp in fps}
    tables: list[tuple[str, Table]] = []
    for fp in fps:
        for build in (tabs.inference_table, tabs.training_table):
            t = build(by_fp[fp], fp)
            if t is not None:
                tables.append((_table_stem(t, several), t))
    t = tabs.tokens_table(ok)
    if t is not None:
        tables.append((t.name, t))
    for fp in fps:
        t = tabs.sweep_table(by_fp[fp], fp)
        if t is not None:
            tables.append((_table_stem(t, several), t))
    texts: dict[str, str] = {}
    for stem, t in tables:
        texts[f"tables/{stem}.md"] = t.markdown()
        texts[f"tables/{stem}.csv"] = t.csv()
        texts[f"tables/{stem}.tex"] = t.latex(f"tab:{figs.slug(suite)}-{stem.replace('__', '-')}")
    style = figs.Style(ok)
    plan = figs.plan_figures(by_fp, ok, style)
    texts["README.md"] = _readme(suite, records, ok, failed, fps, tables, plan, regenerate)
    return SuiteReport(suite, texts, tables, plan, failed)


def _fingerprint_block(fp: str, recs: list[dict]) -> str:
    fields: dict[str, set] = {}
    for r in recs:
        for k, v in r.items():
            if k.startswith("fp_") and v is not None and not isinstance(v, (list, dict)):
                fields.setdefault(k[3:], set()).add(str(v))
    for k in ("dtype", "attn_backend"):
        vals = {str(r.get(k)) for r in recs if r.get(k) is not None}
        if vals:
            fields.setdefault(f"{k} (asked)", set()).update(vals)
    first = ("device", "device_name", "cpu", "threads", "cuda", "driver", "torch", "python", "git_commit",
             "dtype", "attn_backend")
    order = [k for k in first if k in fields] + sorted(k for k in fields if k not in first)
    lines = [f"#### `{fp}`", "", "| field | value |", "|:---|:---|"]
    lines += [f"| {md_escape(k)} | {md_escape(', '.join(sorted(fields[k])))} |" for k in order]
    return "\n".join(lines) + "\n"


def _checkpoints_block(records: list[dict]) -> list[str]:
    """Each checkpoint by its weights' short sha256 (the name tables use), with the paths that held it."""
    held: dict[str, set[str]] = {}
    for r in records:
        sha = r.get("checkpoint_sha256")
        if isinstance(sha, str) and sha:
            path = r.get("checkpoint_path")
            path = path if isinstance(path, str) else r.get("checkpoint")
            held.setdefault(sha, set()).add(f"{r.get('model')}: {path}")
    if not held:
        return []
    out = ["### Checkpoints", "", "Weights are identified by the sha256 of their tensors (names, dtypes, "
           "shapes, bytes), so one set of weights is one checkpoint whatever file held it.", "",
           "| sha256 (short) | sha256 | model: path |", "|:---|:---|:---|"]
    out += [f"| `{sha[:12]}` | `{sha}` | {md_escape('; '.join(sorted(paths)))} |"
            for sha, paths in sorted(held.items())]
    return out + [""]


def _readme(suite, records, ok, failed, fps, tables, plan, regenerate) -> str:
    n_train = sum(r.get("mode") == "train" for r in ok)
    out = [f"# tokenbench report: suite `{suite}`", "",
           f"Built by `tokenbench report` from {len(ok) + len(failed)} result records "
           f"({len(ok)} ok: {len(ok) - n_train} inference, {n_train} training; {len(failed)} failed). "
           "Every number here is computed from those records; none is typed in by hand. "
           "Regenerate this folder with:", "", "```", regenerate, "```", "",
           "Timings from different hardware fingerprints are never compared in one column: each "
           "fingerprint has its own tables and timing figures. FLOPs, token counts and top-1 do not "
           "depend on hardware.", ""]
    # provenance
    out += ["## Provenance", "", "### Commands that produced the results", "", "```"]
    cmds = sorted({str(r.get("command")) for r in records if r.get("command")})
    out += cmds or ["(no command recorded)"]
    out += ["```", ""]
    started = sorted(str(r["started"]) for r in records if r.get("started"))
    finished = sorted(str(r["finished"]) for r in records if r.get("finished"))
    if started and finished:
        out += [f"Cells ran from {started[0]} to {finished[-1]}.", ""]
    out += _checkpoints_block(records)
    out += ["### Hardware fingerprints and software", ""]
    for fp in sorted({r["fingerprint"] for r in records}):
        out.append(_fingerprint_block(fp, [r for r in records if r["fingerprint"] == fp]))
    # tables
    out += ["## Tables", "",
            "Each table is also in `tables/` as Markdown, CSV (every number unrounded to 4 decimals, "
            "IQR bounds in their own columns) and LaTeX (booktabs).", ""]
    if not tables:
        out += ["No ok records: no tables.", ""]
    for stem, t in tables:
        heading = t.title + (f" — `{t.fingerprint}`" if t.fingerprint and len(fps) > 1 else "")
        out += [f"### {heading}", ""]
        if t.fingerprint:
            out += [f"Hardware fingerprint: `{t.fingerprint}`.", ""]
        out += [t.markdown_body(), f"Files: [Markdown](tables/{stem}.md) · [CSV](tables/{stem}.csv) · "
                                   f"[LaTeX](tables/{stem}.tex)", ""]
    # figures
    out += ["## Figures", ""]
    for spec in plan.figures:
        out += [f"### {spec.title}", "", f"![{spec.title}](figures/{spec.name}.png)", "",
                f"{spec.caption} ([SVG](figures/{spec.name}.svg))", ""]
    if plan.skipped:
        out += ["Figures not drawn, for lack of data in these records:", ""]
        out += [f"* {title}: {reason}." for title, reason in plan.skipped]
        out.append("")
    # failures
    out += ["## Failed cells", ""]
    if not failed:
        out += ["None.", ""]
    else:
        out += [f"{len(failed)} cell(s) failed; they are left out of every table and figure.", "",
                "| fingerprint | model | dataset | reducer | batch | mode | error |",
                "|:---|:---|:---|:---|---:|:---|:---|"]
        for r in failed:
            err = " ".join(str(r.get("error") or "(no error recorded)").split())
            out.append("| " + " | ".join(md_escape(str(v)) for v in (
                r["fingerprint"], r.get("model") or MISSING, r.get("dataset") or MISSING, r["label"],
                r.get("batch_size") if r.get("batch_size") is not None else MISSING,
                r.get("mode") or MISSING, err)) + " |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _regenerate_command(sources: list[Path], out_dir: Path) -> str:
    return "tokenbench report " + " ".join(_rel(s) for s in sorted(sources, key=_rel)) + \
        f" --out {_rel(out_dir)}"


def build_reports(results_dir_or_paths, out_dir) -> list[SuiteReport]:
    records, sources = _load(results_dir_or_paths)
    out = []
    for suite in sorted({r["suite"] for r in records}):
        recs = [r for r in records if r["suite"] == suite]
        out.append(build_suite(suite, recs, _regenerate_command(sources.get(suite, []), Path(out_dir))))
    return out


# ----------------------------------------------------------------------------------------------------
# public API


def write_report(results_dir_or_paths: str | Path | Iterable[str | Path], out_dir: str | Path,
                 figures: bool = True) -> ReportPaths:
    """Write ``out_dir/<suite>/`` (README, tables, figures) for every suite in the records named.

    Files an earlier report wrote there (listed in its ``.tokenbench-written.json``) that these records no
    longer produce are removed, so the folder matches the records; a file the report did not write is
    never touched. Every path is checked to stay inside ``out_dir`` (a suite named ``..`` writes to
    ``out_dir/_``)."""
    out_dir = Path(out_dir)
    paths = ReportPaths(out_dir)
    reports = build_reports(results_dir_or_paths, out_dir)
    folder = distinct_names({rep.suite for rep in reports})  # a suite named ".." or "." stays inside out_dir
    for rep in reports:
        root = inside(out_dir, folder[rep.suite])
        drawn = {f"figures/{s.name}{e}" for s in rep.plan.figures for e in FIGURE_EXTS}
        for rel in set(rep.texts) | drawn:
            inside(root, rel)  # refuse before writing anything
        owned = WrittenFiles(root)  # delete only what an earlier report wrote here
        for old in owned.stale(set(rep.texts) | drawn):
            old.unlink()
        for rel, text in sorted(rep.texts.items()):
            p = inside(root, rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8", newline="\n")
            (paths.readmes if rel == "README.md" else paths.tables).append(p)
        if figures:
            for spec in rep.plan.figures:
                paths.figures.extend(spec.save(root / "figures"))
        owned.save(set(rep.texts) | (drawn if figures else drawn & owned.previous))
        paths.skipped_figures += [f"{rep.suite}: {t} — {why}" for t, why in rep.plan.skipped]
        paths.failed_cells += len(rep.failed)
    return paths


def check_report(results_dir_or_paths: str | Path | Iterable[str | Path], out_dir: str | Path) -> list[str]:
    """Compare the committed report under ``out_dir`` with one regenerated from the records. Returns one
    line per stale file (differs, missing, or no longer generated); empty when the report is current."""
    out_dir = Path(out_dir)
    reports = build_reports(results_dir_or_paths, out_dir)
    if not reports:
        raise FileNotFoundError(f"no result records in {results_dir_or_paths}")
    stale = []
    with tempfile.TemporaryDirectory(prefix="tokenbench-report-check-") as tmp:
        for rep in reports:
            committed = inside(out_dir, safe_name(rep.suite))
            for rel, text in sorted(rep.texts.items()):
                fresh = inside(tmp, safe_name(rep.suite), rel)
                fresh.parent.mkdir(parents=True, exist_ok=True)
                fresh.write_text(text, encoding="utf-8", newline="\n")
                old = committed / rel
                if not old.is_file():
                    stale.append(f"{old}: missing")
                elif old.read_bytes() != fresh.read_bytes():
                    stale.append(f"{old}: differs from the records (regenerated copy differs)")
            tables_dir = committed / "tables"
            if tables_dir.is_dir():
                for old in sorted(tables_dir.iterdir()):
                    if old.suffix in TABLE_EXTS and f"tables/{old.name}" not in rep.texts:
                        stale.append(f"{old}: no longer generated from these records")
            for spec in rep.plan.figures:
                for ext in FIGURE_EXTS:
                    p = committed / "figures" / f"{spec.name}{ext}"
                    if not p.is_file():
                        stale.append(f"{p}: missing figure")
            figures_dir = committed / "figures"
            if figures_dir.is_dir():
                names = {f"{s.name}{e}" for s in rep.plan.figures for e in FIGURE_EXTS}
                for old in sorted(figures_dir.iterdir()):
                    if old.suffix in FIGURE_EXTS and old.name not in names:
                        stale.append(f"{old}: no longer generated from these records")
    return stale


def headline_table(df) -> str:
    """The inference results of each suite and fingerprint as compact aligned text for the terminal
    (the report's inference table without params and IQRs). ``df``: a DataFrame from
    :func:`tokenbench.harness.results.load`."""
    ok, failed = tabs.dedupe(records_from_frame(df))
    c, s = tabs.col, tabs.text
    cols = [c("model", "model", s, "l"), c("dataset", "dataset", s, "l"),
            c("reducer", "label", s, "l"), c("batch", "batch_size", s),
            c("top-1 %", "top1", tabs.fixed(1)), c("Δtop-1", "delta_top1", tabs.signed(1)),
            c("GFLOPs", "gflops", tabs.adaptive), c("tokens in", "tokens_in_mean", tabs.fixed(1)),
            c("out", "tokens_out_mean", tabs.fixed(1)), c("clips/s", "clips_per_s", tabs.adaptive),
            c("speedup", "speedup", tabs.times(2))]
    blocks = []
    for suite in sorted({r["suite"] for r in ok}):
        for fp in sorted({r["fingerprint"] for r in ok if r["suite"] == suite}):
            recs = [r for r in ok if r["suite"] == suite and r["fingerprint"] == fp
                    and r.get("mode") == "inference"]
            if recs:
                t = Table("headline", "", cols, tabs.inference_values(recs), fp)
                blocks.append(f"suite {suite} · hardware {fp}\n" + t.text())
    if failed:
        blocks.append(f"{len(failed)} failed cell(s): see the report's README.\n")
    return "\n".join(blocks) if blocks else "no inference results\n"


# ----------------------------------------------------------------------------------------------------
# command line


def add_cli(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild tables, figures and README from result records",
        description="Rebuild the paper-style tables (Markdown, CSV, LaTeX), figures (PNG, SVG) and a "
                    "README for every suite in the records, under OUT/<suite>/. With --check, write "
                    "nothing and exit 1 if the committed tables/README under OUT are stale.")
    p.add_argument("results", nargs="*", default=["results"], metavar="RESULTS",
                   help="records.jsonl files or folders searched recursively (default: results)")
    p.add_argument("--out", default="reports", help="report root; each suite goes to OUT/<suite>/ "
                                                     "(default: reports)")
    p.add_argument("--check", action="store_true",
                   help="compare the committed report with one regenerated from the records; exit 1 "
                        "listing stale files")
    p.add_argument("--no-figures", action="store_true", help="write tables and README only")
    p.set_defaults(func=run)


def run(args) -> int:
    from .cli import UserError
    from .paths import UnsafePathError
    from .results import NotResultsError

    try:
        if args.check:
            stale = check_report(args.results, args.out)
            if stale:
                print(f"tokenbench report --check: {len(stale)} stale file(s) under {args.out}:", file=sys.stderr)
                for line in stale:
                    print(f"  {line}", file=sys.stderr)
                print(f"regenerate with: tokenbench report {' '.join(args.results)} --out {args.out}",
                      file=sys.stderr)
                return 1
            print(f"report under {args.out} is up to date with {' '.join(args.results)}")
            return 0
        paths = write_report(args.results, args.out, figures=not args.no_figures)
    except (FileNotFoundError, NotResultsError, UnsafePathError) as exc:
        raise UserError(str(exc)) from exc
    if not paths.readmes:
        raise UserError(f"no result records found in {' '.join(args.results)}")
    for readme in paths.readmes:
        print(f"wrote {readme.parent}/ ({readme.name}, "
              f"{sum(p.parent.parent == readme.parent for p in paths.tables)} table files, "
              f"{sum(p.parent.parent == readme.parent for p in paths.figures)} figure files)")
    for s in paths.skipped_figures:
        print(f"  skipped figure {s}")
    if paths.failed_cells:
        print(f"  {paths.failed_cells} failed cell(s) listed in the README")
    return 0
