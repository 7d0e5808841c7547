"""Where a suite comes from (a built-in name or a file) and where each of its keys sits (line numbers)."""
from __future__ import annotations

import difflib
import importlib.resources
import os
import re
from pathlib import Path

from ..errors import SuiteError


def _split_dotted(s: str) -> list[str]:
    parts, cur, quote = [], "", None
    for ch in s:
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


class SourceMap:
    """Where each table and key of a TOML document starts: ``line(("reducers", 2, "params", "r"))``.

    Array-of-tables entries are addressed by index. A path not found falls back to its longest known
    prefix (a key inside an inline table reports the line of that table's key).
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*(\]\]?)\s*(#.*)?$")
    _KEY = re.compile(r"^\s*((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)"
                      r"\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        counts: dict[tuple, int] = {}  # array-of-tables path -> entries seen
        arrays: set[tuple] = set()
        table: tuple = ()
        depth, ml = 0, None  # open brackets of a multi-line value; open multi-line string delimiter
        for no, line in enumerate(text.splitlines(), 1):
            if ml or depth:
                depth, ml = self._scan(line, depth, ml)
                continue
            m = self._HEADER.match(line)
            if m and not self._KEY.match(line):
                parts = _split_dotted(m.group(2))
                resolved: list = []
                for i, p in enumerate(parts):
                    resolved.append(p)
                    last = i == len(parts) - 1
                    if tuple(resolved) in arrays and not (last and m.group(1) == "[["):
                        resolved.append(counts[tuple(resolved)] - 1)
                if m.group(1) == "[[":
                    key = tuple(resolved)
                    arrays.add(key)
                    counts[key] = counts.get(key, 0) + 1
                    resolved.append(counts[key] - 1)
                table = tuple(resolved)
                self.lines.setdefault(table, no)
                continue
            k = self._KEY.match(line)
            if k:
                path = table + tuple(_split_dotted(k.group(1)))
                self.lines.setdefault(path, no)
                depth, ml = self._scan(line[k.end():], 0, None)

    @staticmethod
    def _scan(s: str, depth: int, ml: str | None) -> tuple[int, str | None]:
        """Track brackets and multi-line strings through one line of a value."""
        i, n = 0, len(s)
        while i < n:
            if ml:
                j = s.find(ml, i)
                if j < 0:
                    return depth, ml
                i, ml = j + 3, None
                continue
            ch = s[i]
            if s.startswith('"""', i) or s.startswith("'''", i):
                ml = s[i:i + 3]
                i += 3
            elif ch == '"':
                i += 1
                while i < n and s[i] != '"':
                    i += 2 if s[i] == "\\" else 1
                i += 1
            elif ch == "'":
                j = s.find("'", i + 1)
                i = n if j < 0 else j + 1
            elif ch == "#":
                break
            else:
                if ch in "[{":
                    depth += 1
                elif ch in "]}":
                    depth = max(0, depth - 1)
                i += 1
        return depth, ml

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def builtin_suites() -> list[str]:
    """Names of the suites shipped inside the package (``tokenbench run --suite NAME``)."""
    folder = importlib.resources.files("tokenbench.harness.suites")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def builtin_suite_descriptions() -> dict[str, str]:
    """Each built-in suite's ``[suite] description`` (for the listing in ``tokenbench run --help``)."""
    import tomllib

    folder = importlib.resources.files("tokenbench.harness.suites")
    return {name: str(tomllib.loads((folder / f"{name}.toml").read_text(encoding="utf-8"))
                      .get("suite", {}).get("description", "")) for name in builtin_suites()}


def suite_source(name_or_path: str | os.PathLike) -> tuple[str, str, str]:
    """(text, display name of the file, default suite name) of a built-in suite name or a file path."""
    s = str(name_or_path)
    p = Path(s)
    if p.is_dir():  # not "not found": it is there, and it is the wrong kind of thing
        raise SuiteError(f"suite {s!r} is a directory; give a suite .toml file or a built-in suite name "
                         f"({', '.join(builtin_suites())})")
    if p.suffix == ".toml" or os.sep in s or p.is_file():
        if not p.is_file():
            raise SuiteError(f"suite file not found: {s}")
        return p.read_text(encoding="utf-8"), str(p), p.stem
    res = importlib.resources.files("tokenbench.harness.suites") / f"{s}.toml"
    if not res.is_file():
        close = difflib.get_close_matches(s, builtin_suites(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SuiteError(f"no built-in suite {s!r}{hint}; built-in: {', '.join(builtin_suites())}; "
                         "or give a path to a .toml file")
    return res.read_text(encoding="utf-8"), f"{s}.toml (built-in)", s
