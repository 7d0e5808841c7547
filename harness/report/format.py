"""How a report table renders: number formats and the :class:`Table` model (Markdown, CSV, LaTeX, terminal).

Numbers are formatted with fixed precision and nothing depends on the time or machine of generation,
so the same records always give byte-identical files.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..schema import canonical_json
from .records import is_missing, num

MISSING = "–"


def fixed(d: int) -> Callable[[Any], str]:
    def f(v):
        v = num(v)
        return MISSING if v is None else f"{v:.{d}f}"
    return f


def signed(d: int) -> Callable[[Any], str]:
    def f(v):
        v = num(v)
        if v is None:
            return MISSING
        v = round(v, d) + 0.0  # no "-0.0"
        return f"{v:+.{d}f}"
    return f


def adaptive(v: Any) -> str:
    """3 significant-ish digits at fixed rules: 0 decimals ≥ 100, 1 decimal ≥ 10, 2 below."""
    v = num(v)
    if v is None:
        return MISSING
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def times(d: int) -> Callable[[Any], str]:
    """A ratio as ``1.23×``."""
    def f(v):
        v = num(v)
        return MISSING if v is None else f"{v:.{d}f}×"
    return f


def with_iqr(value: Any, q1: Any, q3: Any, fmt: Callable[[Any], str], suffix: str = "") -> str:
    if num(value) is None:
        return MISSING
    s = fmt(value) + suffix
    if num(q1) is not None and num(q3) is not None:
        s += f" ({fmt(q1)}–{fmt(q3)})"
    return s


def formatter(spec: str) -> Callable[[Any], str]:
    """A :class:`~tokenbench.harness.schema.Metric`'s ``fmt``: ``fixed:N``, ``signed:N``, ``sig:N`` (N
    significant digits), ``adaptive``, ``g`` (shortest) or ``text``."""
    kind, _, digits = spec.partition(":")
    if kind == "fixed":
        return fixed(int(digits))
    if kind == "signed":
        return signed(int(digits))
    if kind == "adaptive":
        return adaptive
    if kind == "sig":
        return lambda v: MISSING if num(v) is None else f"{num(v):.{int(digits)}g}"
    if kind == "g":
        return lambda v: MISSING if num(v) is None else f"{num(v):g}"
    if kind == "text":
        return lambda v: MISSING if v is None else str(v)
    raise ValueError(f"unknown metric format {spec!r}")


def params_text(params: dict) -> str:
    if not params:
        return MISSING
    return ", ".join(f"{k}={canonical_json(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in sorted(params.items()))


def csv_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, dict)):
        return canonical_json(v)
    f = num(v)
    if f is not None and not isinstance(v, str):
        return repr(round(f, 4) + 0.0)
    return "" if is_missing(v) else str(v)


def count_fields() -> set[str]:
    """Metrics that count things (clips, videos, tokens min/max, repeats …): those shown without decimals."""
    return {m.name for m in schema.METRIC_TABLE if m.fmt == "fixed:0"}


def as_count(v: Any) -> Any:
    """A whole-number float (a count read through a DataFrame) as an int, so a CSV says ``240``, not ``240.0``."""
    f = num(v)
    return int(f) if f is not None and not isinstance(v, (bool, str)) and f.is_integer() else v


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "τ": r"$\tau$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "—": "---", "²": r"$^2$",
          "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "≥": r"$\geq$", "≤": r"$\leq$",
          "′": "'", "ᵀ": r"$^\top$", "…": r"\dots{}", "|": r"\textbar{}", "<": r"\textless{}",
          ">": r"\textgreater{}"}


def latex_escape(s: str) -> str:
    out = "".join(_LATEX.get(c, c) for c in s)
    return out.replace("$$", "")  # merge adjacent math, e.g. "$\tau$$\times$"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------------------------------
# the table model


@dataclass(frozen=True)
class Col:
    header: str                      # Markdown / LaTeX header
    fields: tuple[str, ...]          # CSV columns, read raw from the row
    text: Callable[[dict], str]      # the cell as shown in Markdown / LaTeX / terminal
    align: str = "r"                 # "l" or "r"


@dataclass
class Table:
    name: str                        # file stem, e.g. "inference"
    title: str
    columns: list[Col]
    rows: list[dict]
    fingerprint: str | None = None   # the one fingerprint of its timings (None: hardware-independent)
    notes: list[str] = field(default_factory=list)

    def csv_fields(self) -> list[str]:
        seen: list[str] = ["fingerprint"] if self.fingerprint else []
        for c in self.columns:
            seen += [f for f in c.fields if f not in seen]
        return seen

    def markdown_body(self) -> str:
        head = "| " + " | ".join(md_escape(c.header) for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if c.align == "r" else ":---" for c in self.columns) + "|"
        lines = [head, rule]
        for row in self.rows:
            lines.append("| " + " | ".join(md_escape(c.text(row)) for c in self.columns) + " |")
        out = "\n".join(lines) + "\n"
        if self.notes:
            out += "\n" + "\n".join(f"* {n}" for n in self.notes) + "\n"
        return out

    def markdown(self) -> str:
        out = f"# {self.title}\n\n"
        if self.fingerprint:
            out += f"Hardware fingerprint: `{self.fingerprint}` (all timings in this table were measured on it).\n\n"
        return out + self.markdown_body()

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        fields = self.csv_fields()
        counts = count_fields()
        w.writerow(fields)
        for row in self.rows:
            w.writerow([csv_value(self.fingerprint if f == "fingerprint" else
                                  as_count(row.get(f)) if f in counts else row.get(f)) for f in fields])
        return buf.getvalue()

    def latex(self, label: str) -> str:
        spec = "".join(c.align for c in self.columns)
        caption = self.title + (f" (hardware: {self.fingerprint})" if self.fingerprint else "")
        lines = ["% Generated by `tokenbench report` from result records; do not edit by hand.",
                 "% Needs \\usepackage{booktabs}.",
                 "\\begin{table}[t]", "\\centering", "\\small",
                 f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}",
                 f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(latex_escape(c.header) for c in self.columns) + " \\\\", "\\midrule"]
        for row in self.rows:
            lines.append(" & ".join(latex_escape(c.text(row)) for c in self.columns) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def text(self, headers: Iterable[str] | None = None) -> str:
        """Aligned plain text for the terminal; ``headers`` picks columns by header."""
        cols = self.columns if headers is None else [c for h in headers for c in self.columns
                                                       if c.header == h]
        cells = [[c.header for c in cols]] + [[c.text(r) for c in cols] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines = []
        for row in cells:
            parts = [v.rjust(w) if c.align == "r" else v.ljust(w) for v, w, c in zip(row, widths, cols)]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines) + "\n"


