"""Manifests: the ``path label`` video lists VideoMAE, MMAction2 and pytorchvideo read, and converters to
them from the official Kinetics CSV and Something-Something-v2 JSON files.

**Manifest format.** One video per line: a path, whitespace, an integer label::

    abseiling/0wR5jVB-WPk_000417_000427.mp4 0
    /data/k400/val/zumba/zyQ4dU9aX4U_000001_000011.mp4 399

The label is the last field, so paths may contain spaces. Blank lines and lines starting with ``#`` are
skipped. Label ``-1`` marks an unlabelled video (test splits). Relative paths are resolved against
``root`` when given, else against the manifest's own folder. A UTF-8 byte-order mark (Windows editors
write one) is not part of the first path. A line repeating an earlier video with the same label counts once,
with a warning naming both lines (a video counted twice weighs twice in top-1); with another label it is
a :class:`ManifestError`. A line that does not parse raises
:class:`ManifestError` naming the manifest and the line; a listed file that is missing or undecodable
raises :class:`~tokenbench.datasets.decode.VideoDecodeError` naming the file, the manifest and the line
(when the clip is loaded, so one bad file fails one clip, not the whole dataset).

**Kinetics.** The official CSVs have columns ``label,youtube_id,time_start,time_end,split`` (test CSVs
lack ``label``). The downloaders name each clip ``<youtube_id>_<start:06d>_<end:06d>.mp4`` (the
ActivityNet crawler's ``'%s_%06d_%06d.mp4'``), either all in one folder per split (``layout="flat"``)
or in one folder per class name (``layout="class_dirs"``, the crawler's layout; unlabelled rows go to
``test/``). Class ids are the positions in a label list when given (one class name per line, or a
``id,name`` CSV, or a JSON ``{name: id}``), else the sorted class names — the alphabetical order of the
usual Kinetics label files.

**Something-Something v2.** ``labels.json`` maps each template to its id (``{"Approaching something
with your camera": "0", …}``); ``train.json`` / ``validation.json`` list ``{"id": "78687", "template":
"Holding [something] next to [something]", …}``. The template's placeholder brackets are removed
(``[something]`` → ``something``), as the SSv2 tools do, to look up the id. Videos are ``<id>.webm``.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .base import VideoClipDataset, VideoEntry


class RepeatedVideoWarning(UserWarning):
    """A manifest lists one video twice (counted once)."""


_WARNED: set[tuple[str, int]] = set()  # manifests (path, mtime) whose repeats were already reported


class ManifestError(ValueError):
    """A manifest (or a label file) that does not parse. ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}" + (f", line {line}" if line is not None else "") + f": {reason}")


# --------------------------------------------------------------------------------------------
# reading and writing manifests
# --------------------------------------------------------------------------------------------
def read_manifest(manifest: str | Path, root: str | Path | None = None) -> list[VideoEntry]:
    """Parse a ``path label`` manifest into entries (paths resolved against ``root``, else the
    manifest's folder). Raises :class:`ManifestError` on a malformed line, ``FileNotFoundError`` when
    the manifest itself is missing."""
    manifest = Path(manifest)
    if not manifest.is_file():
        what = "is a directory, not a manifest file" if manifest.is_dir() else (
            "is not a regular file" if manifest.exists() else "does not exist")
        raise FileNotFoundError(f"manifest {manifest} {what}")
    base = Path(root) if root is not None else manifest.resolve().parent
    entries = []
    seen: dict[Path, tuple[int, int]] = {}  # path → (line, label) of its first listing
    repeats: list[str] = []
    with open(manifest, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is dropped
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise ManifestError(manifest, lineno, f"expected 'PATH LABEL', got {text!r}")
            rel, label_s = parts
            try:
                label = int(label_s)
            except ValueError:
                raise ManifestError(manifest, lineno, f"label {label_s!r} is not an integer "
                                                      f"(expected 'PATH LABEL', got {text!r})") from None
            if label < -1:
                raise ManifestError(manifest, lineno, f"label {label} is negative (−1 marks unlabelled)")
            p = Path(rel)
            path = p if p.is_absolute() else base / p
            first = seen.get(path)
            if first is not None:
                if first[1] != label:
                    raise ManifestError(manifest, lineno, f"{rel} is listed again with label {label}; line "
                                                          f"{first[0]} gives it label {first[1]}")
                repeats.append(f"line {lineno} repeats line {first[0]} ({rel})")
                continue
            seen[path] = (lineno, label)
            entries.append(VideoEntry(path=path, label=label, name=rel, line=lineno))
    said = (str(manifest.resolve()), manifest.stat().st_mtime_ns)
    if repeats and said not in _WARNED:  # once a process: a run reads a manifest in several places
        _WARNED.add(said)
        warnings.warn(f"manifest {manifest}: {len(repeats)} repeated video(s) counted once: {'; '.join(repeats[:3])}"
                      + (" …" if len(repeats) > 3 else ""), RepeatedVideoWarning, stacklevel=2)
    if not entries:
        raise ManifestError(manifest, None, "lists no video")
    return entries


def write_manifest(rows: Iterable[tuple[str, int]], out: str | Path) -> Path:
    """Write ``(path, label)`` rows as a ``path label`` manifest."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for path, label in rows:
            if "\n" in str(path):
                raise ValueError(f"path {path!r} contains a newline")
            f.write(f"{path} {int(label)}\n")
    return out


def _read_json(path: Path, kind: type | tuple[type, ...], expected: str):
    """The JSON value in ``path``, which must be a ``kind``; else a :class:`ManifestError` naming the file
    (and the line of a syntax error) and what was expected."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, kind):
        raise ManifestError(path, None, f"expected {expected}")
    return data


def read_label_list(path: str | Path) -> list[str]:
    """Class names in id order from a label file: one name per line; or a CSV with ``id,name`` columns
    (header optional); or a JSON mapping ``{name: id}`` or list of names."""
    path = Path(path)
    if path.suffix == ".json":
        data = _read_json(path, (list, dict), "a JSON list of class names or an object mapping name → id")
        if isinstance(data, list):
            return [str(x) for x in data]
        return _names_by_id({str(k): v for k, v in data.items()}, path)
    text = path.read_text(encoding="utf-8")
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if rows and len(rows[0]) == 2 and all(len(r) == 2 for r in rows):
        body = rows[1:] if not rows[0][0].strip().lstrip("-").isdigit() else rows
        if body and all(r[0].strip().isdigit() for r in body):
            return _names_by_id({r[1].strip(): r[0].strip() for r in body}, path)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_by_id(mapping: dict[str, object], where: Path) -> list[str]:
    try:
        by_id = {int(v): k for k, v in mapping.items()}  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ManifestError(where, None, f"class ids must be integers ({exc})") from None
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) != len(mapping):
        raise ManifestError(where, None, f"class ids must be 0…{len(mapping) - 1}, each once")
    return [by_id[i] for i in range(len(by_id))]


def write_label_list(classes: Iterable[str], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return out


@dataclass
class Conversion:
    """What a converter produced: manifest rows (paths relative to the video root), the class names in
    id order, and the listed videos not found under the video root (when one was given)."""

    rows: list[tuple[str, int]]
    classes: list[str]
    missing: list[str] = field(default_factory=list)
    manifest: Path | None = None  # the manifest written, when ``out`` was given
    source: str = ""  # the file converted
    lines: list[int | None] = field(default_factory=list)  # each row's line in ``source`` (CSV only)

    def entries(self, root: str | Path | None = None) -> list[VideoEntry]:
        """The rows as dataset entries, paths under ``root``, located at their line of ``source``."""
        base = Path(root) if root is not None else Path(".")
        lines = self.lines or [None] * len(self.rows)
        return [VideoEntry(path=base / rel, label=label, name=rel, line=ln)
                for (rel, label), ln in zip(self.rows, lines)]


def _finish(rows, lines, classes, missing, out, skip_missing, source) -> Conversion:
    if skip_missing:
        gone = set(missing)
        keep = [k for k, r in enumerate(rows) if r[0] not in gone]
        rows, lines = [rows[k] for k in keep], [lines[k] for k in keep]
    conv = Conversion(rows, classes, missing, source=str(source), lines=lines)
    if out is not None:
        conv.manifest = write_manifest(rows, out)
    return conv


# --------------------------------------------------------------------------------------------
# Kinetics
# --------------------------------------------------------------------------------------------
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")


def kinetics_filename(youtube_id: str, start: float | str, end: float | str, ext: str = ".mp4") -> str:
    """``<youtube_id>_<start:06d>_<end:06d>.mp4``, the official downloaders' clip names."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}{ext}"


def kinetics_csv_to_manifest(csv_path: str | Path, out: str | Path | None = None, *,
                             classes: str | Path | list[str] | None = None,
                             video_root: str | Path | None = None, layout: str = "auto", ext: str = ".mp4",
                             skip_missing: bool = False) -> Conversion:
    """Convert an official Kinetics CSV to manifest rows (written to ``out`` when given).

    ``classes``: a label list (path or names) fixing the ids; default the CSV's sorted class names.
    ``layout``: ``flat`` (``<file>``), ``class_dirs`` (``<class name>/<file>``), or ``auto`` (per row,
    whichever exists under ``video_root``; ``flat`` without a root). With ``video_root``, rows whose
    file is absent are reported in ``missing`` (and dropped with ``skip_missing=True``).
    """
    csv_path = Path(csv_path)
    if layout not in ("auto", "flat", "class_dirs"):
        raise ValueError(f"layout must be auto, flat or class_dirs, got {layout!r}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        lacking = [c for c in KINETICS_COLUMNS if c not in fields]
        if lacking:
            raise ManifestError(csv_path, 1, f"not a Kinetics CSV: no column {', '.join(lacking)} "
                                             f"(expected label,youtube_id,time_start,time_end,split)")
        records = []
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                name = kinetics_filename(row["youtube_id"], row["time_start"], row["time_end"], ext)
            except ValueError:
                raise ManifestError(csv_path, lineno, f"bad time_start/time_end {row['time_start']!r}, "
                                                      f"{row['time_end']!r}") from None
            records.append((lineno, row.get("label", ""), name))
    if isinstance(classes, (str, Path)):
        class_names = read_label_list(classes)
    elif classes is not None:
        class_names = list(classes)
    else:
        class_names = sorted({label for _, label, _ in records if label})
    ids = {c: i for i, c in enumerate(class_names)}
    root = Path(video_root) if video_root is not None else None
    rows, lines, missing = [], [], []
    for lineno, label, name in records:
        if label and label not in ids:
            raise ManifestError(csv_path, lineno, f"class {label!r} is not in the label list "
                                                  f"({len(class_names)} classes)")
        folder = label if label else "test"
        candidates = {"flat": name, "class_dirs": f"{folder}/{name}"}
        if layout != "auto":
            rel = candidates[layout]
        elif root is not None and not (root / name).exists() and (root / candidates["class_dirs"]).exists():
            rel = candidates["class_dirs"]
        else:
            rel = name
        if root is not None and not (root / rel).exists():
            missing.append(rel)
        rows.append((rel, ids[label] if label else -1))
        lines.append(lineno)
    return _finish(rows, lines, class_names, missing, out, skip_missing, csv_path)


# --------------------------------------------------------------------------------------------
# Something-Something v2
# --------------------------------------------------------------------------------------------
def ssv2_template(template: str) -> str:
    """``"Putting [something] on [something]"`` → ``"Putting something on something"``."""
    return template.replace("[", "").replace("]", "").strip()


def ssv2_json_to_manifest(labels_json: str | Path, split_json: str | Path, out: str | Path | None = None, *,
                          video_root: str | Path | None = None, ext: str = ".webm",
                          skip_missing: bool = False) -> Conversion:
    """Convert SSv2 ``labels.json`` + a split's JSON (``train.json``, ``validation.json``, ``test.json``)
    to manifest rows ``<id>.webm label`` (label −1 for entries without a template, i.e. the test split)."""
    labels_json, split_json = Path(labels_json), Path(split_json)
    mapping = _read_json(labels_json, dict, "a JSON object mapping template → class id")
    class_names = _names_by_id({ssv2_template(k): v for k, v in mapping.items()}, labels_json)
    ids = {c: i for i, c in enumerate(class_names)}
    items = _read_json(split_json, list, "a JSON list of {id, template, …} objects")
    root = Path(video_root) if video_root is not None else None
    rows, missing = [], []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ManifestError(split_json, None, f"entry {k} has no 'id': {item!r}"[:200])
        rel = f"{item['id']}{ext}"
        if "template" in item:
            t = ssv2_template(str(item["template"]))
            if t not in ids:
                raise ManifestError(split_json, None, f"entry {k} (id {item['id']}): template {t!r} is not "
                                                      f"in {labels_json.name}")
            label = ids[t]
        else:
            label = -1
        if root is not None and not (root / rel).exists():
            missing.append(rel)
        rows.append((rel, label))
    return _finish(rows, [None] * len(rows), class_names, missing, out, skip_missing, split_json)


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
class ManifestDataset(VideoClipDataset):
    """Clips from the videos a ``path label`` manifest lists (see :class:`VideoClipDataset` for the
    sampling, views and transforms options). ``classes``: optional label list (sets ``num_classes``
    and ``classes``; labels must fall inside it). ``manifest`` may also be a :class:`Conversion`
    (straight from a converter, nothing written; errors then name the CSV and its line)."""

    needs = ("manifest",)

    def __init__(self, manifest: str | Path | Conversion, root: str | Path | None = None, *,
                 name: str = "manifest", classes: str | Path | list[str] | None = None, **options):
        if isinstance(manifest, Conversion):
            entries = manifest.entries(root)
            if classes is None:
                classes = manifest.classes
            manifest = manifest.source
        else:
            entries = read_manifest(manifest, root)
        self.classes: list[str] | None = None
        num_classes = options.pop("num_classes", None)
        if classes is not None:
            self.classes = read_label_list(classes) if isinstance(classes, (str, Path)) else list(classes)
            num_classes = len(self.classes)
        if num_classes is not None:
            for e in entries:
                if e.label >= num_classes:
                    raise ManifestError(manifest, e.line, f"label {e.label} ≥ the {num_classes} classes")
        self.num_classes_from = "labels" if num_classes is None else "declared"  # see datasets/classes.py
        self.root = None if root is None else str(root)
        super().__init__(entries, name=name, manifest=manifest, num_classes=num_classes, **options)

    def missing(self) -> list[VideoEntry]:
        """Entries whose file does not exist (a quick check before a long run)."""
        return [e for e in self.entries if not e.path.is_file()]

    def info(self):
        out = super().info()
        if self.root:
            out["root"] = self.root
        out["num_classes_from"] = self.num_classes_from
        return out
