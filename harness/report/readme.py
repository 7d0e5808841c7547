"""The per-suite README of a report: provenance, hardware fingerprints, every table, figures, failed cells."""
from __future__ import annotations

from .format import MISSING, md_escape, params_text
from .provenance import AA_TOLERANCE, aa_failures, aa_text
from .records import Record, sort_key


def fingerprint_block(fp: str, recs: list[Record]) -> str:
    fields: dict[str, set] = {}
    for r in recs:
        for k, v in r.machine.items():
            if v is not None and not isinstance(v, (list, dict)):
                fields.setdefault(k, set()).add(str(v))
    for k in ("dtype", "attn_backend"):
        vals = {str(r.value(k)) for r in recs if r.value(k) is not None}
        if vals:
            fields.setdefault(f"{k} (asked)", set()).update(vals)
    first = ("device", "device_name", "cpu", "threads", "cuda", "driver", "torch", "python", "git_commit",
             "dtype", "attn_backend")
    order = [k for k in first if k in fields] + sorted(k for k in fields if k not in first)
    bad = aa_failures(recs)
    mark = " ⚠ A/A control off" if bad else ""
    lines = [f"#### `{fp}`{mark}", ""]
    if bad:  # the estimator failed its own check here: every speedup of this fingerprint is suspect
        lines += [f"**The A/A control (the baseline timed against itself) reads further than "
                  f"{AA_TOLERANCE:.0%} from 1.00 on this fingerprint**, so its speedups are not to be trusted:", ""]
        lines += [f"* {md_escape(aa_text(r))}" for r in bad] + [""]
    lines += ["| field | value |", "|:---|:---|"]
    lines += [f"| {md_escape(k)} | {md_escape(', '.join(sorted(fields[k])))} |" for k in order]
    return "\n".join(lines) + "\n"


def suite_readme(suite, records, ok, failed, fps, tables, plan, regenerate) -> str:
    """The README of one suite's report: provenance, every table inline, figure links, failed cells."""
    n_train = sum(r.mode == "train" for r in ok)
    out = [f"# tokenbench report: suite `{suite}`", "",
           f"Built by `tokenbench report` from {len(ok) + len(failed)} result records "
           f"({len(ok)} ok: {len(ok) - n_train} inference, {n_train} training; {len(failed)} failed). "
           "Every number here is computed from those records; none is typed in by hand. "
           "Regenerate this folder with:", "", "```", regenerate, "```", "",
           "Timings from different hardware fingerprints are never compared in one column: each "
           "fingerprint has its own tables and timing figures. FLOPs, token counts and top-1 do not "
           "depend on hardware.", ""]
    out += _provenance(records) + _tables(tables, fps) + as_run(ok) + _figures(plan) + _failures(failed)
    return "\n".join(out).rstrip("\n") + "\n"


def _provenance(records: list[Record]) -> list[str]:
    out = ["## Provenance", "", "### Commands that produced the results", "", "```"]
    cmds = sorted({str(r.command) for r in records if r.command})
    out += cmds or ["(no command recorded)"]
    out += ["```", ""]
    started = sorted(str(r.started) for r in records if r.started)
    finished = sorted(str(r.finished) for r in records if r.finished)
    if started and finished:
        out += [f"Cells ran from {started[0]} to {finished[-1]}.", ""]
    out += _checkpoints(records)
    out += ["### Hardware fingerprints and software", ""]
    for fp in sorted({r.fingerprint for r in records}):
        out.append(fingerprint_block(fp, [r for r in records if r.fingerprint == fp]))
    return out


def _checkpoints(records: list[Record]) -> list[str]:
    """Each checkpoint by its weights' short sha256 (the name tables use), with the paths that held it."""
    held: dict[str, set[str]] = {}
    for r in records:
        # a train record's trained weights are never written: it names the weights it started from
        pre = "init_" if r.mode == "train" else ""
        sha = r.value(pre + "checkpoint_sha256")
        if isinstance(sha, str) and sha:
            path = r.value(pre + "checkpoint_path")
            path = path if isinstance(path, str) else r.value("checkpoint")
            held.setdefault(sha, set()).add(f"{r.model}: {path}")
    if not held:
        return []
    out = ["### Checkpoints", "", "Weights are identified by the sha256 of their tensors (names, dtypes, "
           "shapes, bytes), so one set of weights is one checkpoint whatever file held it.", "",
           "| sha256 (short) | sha256 | model: path |", "|:---|:---|:---|"]
    out += [f"| `{sha[:12]}` | `{sha}` | {md_escape('; '.join(sorted(paths)))} |"
            for sha, paths in sorted(held.items())]
    return out + [""]


def _tables(tables, fps) -> list[str]:
    out = ["## Tables", "",
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
    return out


def _figures(plan) -> list[str]:
    out = ["## Figures", ""]
    for spec in plan.figures:
        out += [f"### {spec.title}", "", f"![{spec.title}](figures/{spec.name}.png)", "",
                f"{spec.caption} ([SVG](figures/{spec.name}.svg))", ""]
    if plan.skipped:
        out += ["Figures not drawn, for lack of data in these records:", ""]
        out += [f"* {title}: {reason}." for title, reason in plan.skipped]
        out.append("")
    return out


def _failures(failed: list[Record]) -> list[str]:
    out = ["## Failed cells", ""]
    if not failed:
        return out + ["None.", ""]
    out += [f"{len(failed)} cell(s) failed; they are left out of every table and figure.", "",
            "| fingerprint | model | dataset | reducer | batch | mode | error |",
            "|:---|:---|:---|:---|---:|:---|:---|"]
    for r in failed:
        err = " ".join(str(r.error or "(no error recorded)").split())
        out.append("| " + " | ".join(md_escape(str(v)) for v in (
            r.fingerprint, r.model or MISSING, r.dataset or MISSING, r.label,
            r.batch_size if r.batch_size is not None else MISSING,
            r.mode or MISSING, err)) + " |")
    return out + [""]


def _params(params: dict) -> str:
    """``k=v, …`` with floats to 4 significant digits (a calibrated keep has 16)."""
    return params_text({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()})


def as_run(ok: list[Record]) -> list[str]:
    """README lines on what the tables' reducers ran with: parameters after calibration (random masking
    matched to RLT's budget measures its keep), the reducer a trained model was evaluated with, and the
    videos a cell left out as unreadable."""
    rows, seen = [], set()
    for r in sorted(ok, key=sort_key):
        used, ev = r.value("reducer_params_used"), r.value("eval_reducer")
        if not used and not ev:
            continue
        row = (r.mode or MISSING, r.dataset or MISSING, r.label,
               _params(used) if isinstance(used, dict) else MISSING, str(ev) if ev else MISSING)
        if row not in seen:
            seen.add(row)
            rows.append(row)
    out = []
    if rows:
        out += ["### Reducer parameters as run", "",
                "Every parameter of each reducer as it ran (after calibration), and for trained models the "
                "reducer they were evaluated with.", "",
                "| mode | dataset | reducer | parameters as run | evaluated with |", "|:---|:---|:---|:---|:---|"]
        out += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in rows]
        out.append("")
    calibrated = [r for r in sorted(ok, key=sort_key) if isinstance(r.value("calibration"), dict)]
    if calibrated:
        out += ["### Calibrations with the model in the loop", "",
                "Reducers that ran the cell's model on train-split clips before any measured work (never the clips "
                "scored), and what they found.", "",
                "| dataset | reducer | clips | found |", "|:---|:---|:---|:---|"]
        for r in calibrated:
            cal = r.value("calibration")
            src = cal.get("source") or {}
            clips = (f"{src.get('clips', '?')} {src.get('dataset', '?')}/{src.get('split', '?')} "
                     f"(seed {src.get('seed', '?')})")
            found = {k: v for k, v in cal.items() if k != "source"}
            out.append("| " + " | ".join(md_escape(str(v)) for v in (
                r.dataset or MISSING, r.label, clips, _params(found))) + " |")
        out.append("")
    skipped = [(r, e) for r in sorted(ok, key=sort_key) for e in (r.value("skipped_errors") or [])]
    if skipped:
        out += ["### Videos left out as unreadable", ""]
        out += [f"* {md_escape(r.label)} ({r.dataset}): {md_escape(str(e))}" for r, e in skipped]
        out.append("")
    return out
