"""``tokenbench report``: paper-style tables, figures and a README, rebuilt from result records alone.

Command line::

    tokenbench report [RESULTS ...] [--out DIR] [--check] [--no-figures]

* ``RESULTS``: records.jsonl files or folders searched recursively (``results/``, ``results/default``,
  ``results/default/<fingerprint>``); default ``results``.
* ``--out DIR`` (default ``reports``): each suite found gets ``DIR/<suite>/``::

      README.md                        provenance, every table inline, figure links, failed cells
      tables/<table>.{md,csv,tex}      inference, training, tokens, matched_budget, rlt_threshold_sweep,
                                       static_share, inference_details
      figures/<figure>.{png,svg}       accuracy_vs_throughput, gflops_vs_time, token_distribution,
                                       tokens_per_layer, rlt_threshold_sweep, curves_top1_vs_gflops,
                                       curves_top1_vs_throughput, static_share

  Tables and figures that carry timings (inference, training, rlt_threshold_sweep, static_share; accuracy
  vs throughput, GFLOPs vs time, the sweep, throughput-curve and static-share figures) are made once per
  hardware fingerprint: when a suite's
  records come from more than one fingerprint their names end in ``__<fingerprint id>``
  (``tables/inference__cpu-….md``) and the README gives each its own section. Timings from two
  fingerprints never share a column. Token counts do not depend on hardware: the tokens table and the
  token figures span fingerprints, and so do the matched-budget table and the top-1-vs-GFLOPs curves.
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

    records = read(results_dir_or_paths)   # Records: the report's typed records, read once
    write_report(records, out_dir, figures=True) -> ReportPaths   # or the paths themselves
    check_report(results_dir_or_paths, out_dir) -> list[str]      # stale files; [] when current
    headline_table(records) -> str     # compact inference table(s) for the terminal
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import WrittenFiles, distinct_names, inside, safe_name
from ..results import find_record_files
from ..schema import HEAD
from . import figures as figs
from . import tables as tabs
from .curves import matched_budget_table
from .format import Table
from .provenance import AA_TOLERANCE, aa_failures, aa_text, commits_note
from .readme import suite_readme
from .records import Record, dedupe, read_records
from .static_share import static_share_table

__all__ = ["ReportPaths", "Records", "read", "write_report", "check_report", "headline_table"]

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


@dataclass(frozen=True)
class Records:
    """The records a report is built from, and the folders each suite's came from (``results/<suite>`` for
    files in the standard layout: the README's regenerate command names them)."""

    records: list[Record]
    sources: dict[str, list[Path]]


def read(paths: str | Path | Iterable[str | Path]) -> Records:
    """The records of every records file named (files, or folders searched recursively), read once."""
    records, sources = [], {}
    for f in find_record_files(paths):
        recs = read_records([f])
        records += recs
        for suite in sorted({r.suite for r in recs}):
            # results/<suite>/<fp>/records.jsonl -> results/<suite>; any other file: itself
            d = f.parent.parent if f.parent.parent.name == safe_name(suite) else f
            if d not in sources.setdefault(suite, []):
                sources[suite].append(d)
    return Records(records, sources)


def _records(given: Records | str | Path | Iterable[str | Path]) -> Records:
    return given if isinstance(given, Records) else read(given)


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
    failed: list[Record]


def _table_stem(table: Table, several: bool) -> str:
    return table.name + (f"__{safe_name(table.fingerprint)}" if several and table.fingerprint else "")


def build_suite(suite: str, records: list[Record], regenerate: str) -> SuiteReport:
    ok, failed = dedupe(records)
    fps = sorted({r.fingerprint for r in ok})
    several = len(fps) > 1
    by_fp = {fp: [r for r in ok if r.fingerprint == fp] for fp in fps}
    tables: list[tuple[str, Table]] = []
    for fp in fps:
        for build in (tabs.inference_table, tabs.training_table):
            t = build(by_fp[fp], fp)
            if t is not None:
                tables.append((_table_stem(t, several), t))
    for t in (tabs.tokens_table(ok), matched_budget_table(ok)):  # hardware-independent
        if t is not None:
            tables.append((t.name, t))
    for fp in fps:
        for build in (tabs.sweep_table, static_share_table, tabs.details_table):
            t = build(by_fp[fp], fp)
            if t is not None:
                tables.append((_table_stem(t, several), t))
    for _, t in tables:  # the code behind each table's numbers, and whether its timings passed the A/A check
        recs = [r for r in ok if t.fingerprint is None or r.fingerprint == t.fingerprint]
        t.notes.append(commits_note([r for r in recs if _in_table(t, r)]))
        bad = aa_failures(recs) if t.fingerprint is not None else []
        if bad:
            t.notes.insert(0, f"⚠ the A/A control (the baseline timed against itself) is off 1 by more than "
                              f"{AA_TOLERANCE:.0%} on this fingerprint — {'; '.join(aa_text(r) for r in bad)}: "
                              "its speedups are not to be trusted.")
    texts: dict[str, str] = {}
    for stem, t in tables:
        texts[f"tables/{stem}.md"] = t.markdown()
        texts[f"tables/{stem}.csv"] = t.csv()
        texts[f"tables/{stem}.tex"] = t.latex(f"tab:{safe_name(suite)}-{stem.replace('__', '-')}")
    style = figs.Style(ok)
    plan = figs.plan_figures(by_fp, ok, style)
    texts["README.md"] = suite_readme(suite, records, ok, failed, fps, tables, plan, regenerate)
    return SuiteReport(suite, texts, tables, plan, failed)


def _in_table(t: Table, r: Record) -> bool:
    """Whether record ``r`` is of the mode table ``t`` shows."""
    return r.mode == ("train" if t.name == "training" else "inference")


def _regenerate_command(sources: list[Path], out_dir: Path) -> str:
    return "tokenbench report " + " ".join(_rel(s) for s in sorted(sources, key=_rel)) + \
        f" --out {_rel(out_dir)}"


def build_reports(given: Records | str | Path | Iterable[str | Path], out_dir) -> list[SuiteReport]:
    records = _records(given)
    out = []
    for suite in sorted({r.suite for r in records.records}):
        recs = [r for r in records.records if r.suite == suite]
        regenerate = _regenerate_command(records.sources.get(suite, []), Path(out_dir))
        out.append(build_suite(suite, recs, regenerate))
    return out


# ----------------------------------------------------------------------------------------------------
# public API


def write_report(results_dir_or_paths: Records | str | Path | Iterable[str | Path], out_dir: str | Path,
                 figures: bool = True) -> ReportPaths:
    """Write ``out_dir/<suite>/`` (README, tables, figures) for every suite in the records given (read
    already, as :func:`read` returns them, or the paths to read them from).

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


def headline_table(records: Records | Iterable[Record]) -> str:
    """The inference results of each suite and fingerprint as compact aligned text for the terminal
    (the report's inference table without params and IQRs). ``records``: as :func:`read` returns them."""
    ok, failed = dedupe(records.records if isinstance(records, Records) else records)
    cols = tabs.ident_cols("model", "dataset", "reducer", "batch") + tabs.metric_cols(HEAD, iqr=False)
    blocks = []
    for suite in sorted({r.suite for r in ok}):
        for fp in sorted({r.fingerprint for r in ok if r.suite == suite}):
            recs = [r for r in ok if r.suite == suite and r.fingerprint == fp and r.mode == "inference"]
            if recs:
                rows = [tabs.with_metrics(row, row["_record"], HEAD) for row in tabs.inference_values(recs)]
                t = Table("headline", "", cols, rows, fp)
                blocks.append(f"suite {suite} · hardware {fp}\n" + t.text())
    if failed:
        blocks.append(f"{len(failed)} failed cell(s): see the report's README.\n")
    return "\n".join(blocks) if blocks else "no inference results\n"
