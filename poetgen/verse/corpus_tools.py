"""Corpus tools: build one-poem-per-line training text from chinese-poetry JSON or plain text,
summarise a corpus, and fetch known sources with resumable, checksummed downloads.

The regular-verse filter is the one documented in ../shared/corpora/README.md, so a build from
the raw chinese-poetry files reproduces the shared `tang.txt` (see README for the comparison).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from poetgen.errors import CorpusError
from poetgen.files import atomic_open
from poetgen.lm.corpus import held_out, iter_lines, iter_text
from poetgen.verse.prosody import COMMA, PERIOD, detect_form, is_han, line_end_mark, split_verse

# --------------------------------------------------------------------------------------------
# Reading sources


def _json_file_key(p: Path):
    m = re.search(r"(\d+)", p.name)
    return (p.name.split(".")[0], int(m.group(1)) if m else -1, p.name)


def source_files(sources: list[Path]) -> list[Path]:
    """Expand folders to their *.json and *.txt files, JSON files in numeric order (poet.tang.N)."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            found = [p for p in src.iterdir() if p.suffix in (".json", ".txt") and
                     p.name not in ("README.txt",) and not p.name.startswith("authors")]
            files.extend(sorted(found, key=_json_file_key))
        elif src.exists():
            files.append(src)
        else:
            raise CorpusError(f"{src}: not found; give chinese-poetry JSON files, a folder of them, "
                              "or plain text files")
    if not files:
        raise CorpusError(f"no .json or .txt files in {', '.join(map(str, sources))}")
    return files


def iter_json_array(path: Path, chunk: int = 1 << 16) -> Iterator[dict]:
    """Objects of a top-level JSON array, parsed one at a time (memory ~ one object, not the file).

    A malformed file is reported with its line and column, as an editor would show them.
    """
    decoder = json.JSONDecoder()
    pieces = iter_text(path, chunk)
    buf, pos, line_base = "", 0, 1  # line_base: line number of buf[0]

    def fill() -> bool:
        nonlocal buf, pos, line_base
        nxt = next(pieces, None)
        if nxt is None:
            return False
        line_base += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + nxt, 0
        return True

    def fail(at: int, what: str) -> CorpusError:
        line = line_base + buf.count("\n", 0, at)
        col = at - (buf.rfind("\n", 0, at) + 1) + 1
        return CorpusError(f"{path}: malformed JSON at line {line}, column {col}: {what}; "
                           "fix or remove the file")

    started = False
    while True:
        while True:  # skip whitespace (and commas between poems)
            while pos < len(buf) and buf[pos] in " \t\n" + ("," if started else ""):
                pos += 1
            if pos < len(buf) or not fill():
                break
        if pos >= len(buf):
            raise fail(pos, "the file ends before the closing ']'" if started else "no JSON array")
        if not started:
            if buf[pos] != "[":
                raise fail(pos, "expected a JSON array of poems ('[')")
            started, pos = True, pos + 1
            continue
        if buf[pos] == "]":
            return
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as e:
                if not fill():
                    raise fail(e.pos, e.msg) from None
        if not isinstance(obj, dict):
            raise fail(pos, f"expected a poem object, found {type(obj).__name__}")
        yield obj
        pos = end


def iter_poems(files: list[Path]) -> Iterator[tuple[str, str]]:
    """(source name, poem text) from JSON (paragraphs joined) or text files (one poem per line)."""
    for path in files:
        if path.suffix == ".json":
            for obj in iter_json_array(path):
                paragraphs = obj.get("paragraphs")
                if not isinstance(paragraphs, list):
                    raise CorpusError(f"{path}: a poem without a 'paragraphs' list "
                                      f"(id {obj.get('id', '?')}); is this chinese-poetry JSON?")
                yield path.name, "".join(str(p) for p in paragraphs)
        else:
            for line in iter_lines(path):
                yield path.name, line.strip()


# --------------------------------------------------------------------------------------------
# Filtering

_NOTES = re.compile(r"（[^（）]*）|\([^()]*\)|〖[^〖〗]*〗|\[[^\[\]]*\]")
_PUNCT = set("，。？！；：、")


def strip_notes(text: str) -> str:
    """Remove editorial notes: （一作…） (…) 〖1〗 [補字], keeping the poem."""
    prev = None
    while prev != text:  # nested notes
        prev, text = text, _NOTES.sub("", text)
    return text


def regular_form(text: str) -> tuple[str | None, str | None]:
    """(form code like '5x4', None) if `text` is regular verse, else (None, reason)."""
    if not text:
        return None, "empty"
    if any(not (is_han(c) or c in (COMMA, PERIOD)) for c in text) or "囗" in text:
        return None, "odd characters"
    if not text.endswith(PERIOD):
        return None, "does not end with 。"
    if re.search(r"[，。]{2}", text) or text.startswith((COMMA, PERIOD)):
        return None, "doubled punctuation"
    lines = split_verse(text)
    form = detect_form(lines)
    if form is None:
        if len(lines) not in (4, 8):
            return None, "line count not 4 or 8"
        if len({len(x) for x in lines}) != 1:
            return None, "mixed line lengths"
        return None, "uniform but not 5 or 7 characters"
    canonical = "".join(x + line_end_mark(i) for i, x in enumerate(lines))
    if text != canonical:
        return None, "non-canonical punctuation"
    return form.code, None


@dataclass(frozen=True)
class BuildOptions:
    """What `corpus build` keeps and how it splits; each field is one `corpus build` flag."""

    # Keep only regular verse of these forms (5x4 ...), and with "other" every poem that is not
    # regular verse (古体, 杂言, fragments); None = any.
    forms: frozenset[str] | None = None
    simplified: bool = False  # convert traditional characters to simplified (OpenCC t2s)
    dedupe: bool = False  # drop poems identical to an earlier one
    strip_notes: bool = False  # remove editorial notes such as （一作…）, keeping the poem
    min_count: int = 0  # drop poems with a character seen fewer times in the kept poems; 0 = off
    val_fraction: float = 0.0  # hold out this share as <stem>_val (and <stem>_train); 0 = one file
    # Drop every poem with a verse segment (verse_segments) whose SHA-256 is listed in this file,
    # e.g. ../shared/corpora/heldout_lines.sha256: the poems that validate and judge models.
    exclude: Path | None = None


OTHER = "other"  # the `forms` entry for poems that are not regular verse
EXCLUDED = "shares a verse segment with the --exclude list"
_SEGMENT_BREAKS = re.compile(r"[，。？！；：、\s]+")


def verse_segments(text: str) -> list[str]:
    """The verse segments of a poem as heldout_lines.sha256 defines them (see
    ../shared/corpora/README.md): the pieces of 4 or more characters between the marks
    ，。？！；：、 and whitespace, in simplified characters."""
    return [s for s in _SEGMENT_BREAKS.split(text) if len(s) >= 4]


def segment_hash(segment: str) -> str:
    return hashlib.sha256(segment.encode("utf-8")).hexdigest()


def read_segment_hashes(path: Path) -> frozenset[str]:
    """A list of segment hashes: one SHA-256 (64 hex digits) per line."""
    hashes = set()
    for number, line in enumerate(iter_lines(path), 1):
        line = line.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", line):
            if not line:
                continue
            raise CorpusError(f"{path}, line {number}: {line[:70]!r} is not a SHA-256 in hex; "
                              "--exclude takes a list of hashes, one per line")
        hashes.add(line)
    return frozenset(hashes)


@dataclass
class BuildReport:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    forms: Counter = field(default_factory=Counter)
    outputs: dict[str, int] = field(default_factory=dict)  # path -> poems written


def build_corpus(sources: list[Path], out: Path, options: BuildOptions = BuildOptions(), *,
                 progress: Callable[[int], None] = lambda n: None) -> BuildReport:
    """Filter sources into `out` (and `<stem>_train` / `<stem>_val` with a val fraction).

    Two streaming passes: the first filters into a temporary file and counts characters and verse
    lines; the second applies --min-count and the split. The split groups poems that share a
    verse line (duplicates and variants), so a poem and its variant never straddle train and val.
    """
    report = BuildReport()
    counts: Counter = Counter()  # characters of the kept poems, for --min-count
    groups = _VerseGroups()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as kept:
        for text in _filtered_poems(source_files(sources), options, report, progress):
            if options.min_count:
                counts.update(text)
            if options.val_fraction:
                groups.join(_verse_keys(text))
            kept.write(text + "\n")
        kept.seek(0)
        _write_outputs(kept, out, options, counts, groups, report)
    if report.kept == 0:
        raise CorpusError("no poem passed the filters; check --form and the sources")
    return report


def _filtered_poems(files: list[Path], options: BuildOptions, report: BuildReport,
                    progress: Callable[[int], None]) -> Iterator[str]:
    """Pass 1: the poems that pass the form, held-out and duplicate filters, cleaned, one string
    each.

    A poem is held out (`options.exclude`) if a verse segment of its simplified text as shipped
    (notes and all) or of the cleaned text is listed: the list was made from the former, and
    the latter is what training would see.
    """
    convert = _opencc() if options.simplified else None
    excluded = read_segment_hashes(options.exclude) if options.exclude else frozenset()
    simplify = convert or (_opencc() if excluded else None)  # the list is of simplified text
    seen: set[bytes] = set()
    for _, text in iter_poems(files):
        report.read += 1
        progress(report.read)
        shipped = simplify(text) if simplify else text  # simplified, notes and all
        if convert:
            text = shipped
        if options.strip_notes:
            text = strip_notes(text)
        text = re.sub(r"\s+", "", text)
        if not text:
            report.dropped["empty"] += 1
            continue
        if options.forms is not None:
            form, reason = regular_form(text)
            if form not in options.forms if form else OTHER not in options.forms:
                report.dropped[reason or f"form {form} not selected"] += 1
                continue
        cleaned = text if convert else simplify(text) if excluded else text
        if excluded and any(segment_hash(seg) in excluded for seg in
                            verse_segments(shipped) + verse_segments(cleaned)):
            report.dropped[EXCLUDED] += 1
            continue
        if options.dedupe:
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key in seen:
                report.dropped["duplicate"] += 1
                continue
            seen.add(key)
        yield text


def _write_outputs(kept: IO[str], out: Path, options: BuildOptions, counts: Counter,
                   groups: _VerseGroups, report: BuildReport) -> None:
    """Pass 2: --min-count, then each poem to `out`, or to the train or val file of its group."""
    targets = {"all": out} if not options.val_fraction else {
        "train": out.with_name(f"{out.stem}_train{out.suffix}"),
        "val": out.with_name(f"{out.stem}_val{out.suffix}")}
    with ExitStack() as stack:  # all outputs are replaced together, or none is
        handles = {side: stack.enter_context(atomic_open(p)) for side, p in targets.items()}
        for line in kept:
            text = line.rstrip("\n")
            if options.min_count and any(counts[c] < options.min_count
                                         for c in text if c not in _PUNCT):
                report.dropped[f"character seen < {options.min_count} times"] += 1
                continue
            side = "all"
            if options.val_fraction:
                group = groups.find(_verse_keys(text)[0])
                side = "val" if held_out(group, options.val_fraction) else "train"
            handles[side].write(text + "\n")
            report.kept += 1
            report.forms[regular_form(text)[0] or OTHER] += 1
            report.outputs[str(targets[side])] = report.outputs.get(str(targets[side]), 0) + 1


def _verse_keys(text: str) -> list[str]:
    """The verse lines that tie a poem to its variants (the whole text if it has none)."""
    return [x for x in split_verse(text) if len(x) >= 5] or [text]


class _VerseGroups:
    """Union-find over verse lines: poems sharing a line, directly or through others, are one
    group, named by one of its lines."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        while self.parent.setdefault(x, x) != x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving
            x = self.parent[x]
        return x

    def join(self, keys: list[str]) -> None:
        root = self.find(keys[0])
        for key in keys[1:]:
            other = self.find(key)
            if other != root:
                self.parent[other] = root


def check_build_tools(options: BuildOptions) -> None:
    """Raise now, not after a download, if building with `options` needs a missing library:
    OpenCC, for --simplified and for --exclude (its list is of simplified text)."""
    if options.simplified or options.exclude:
        _opencc()


def _opencc():
    try:
        import opencc
    except ImportError:
        raise CorpusError("--simplified needs OpenCC: pip install 'poetgen[corpus]' "
                          "(or pip install opencc)") from None
    return opencc.OpenCC("t2s").convert


# --------------------------------------------------------------------------------------------
# Statistics


def corpus_stats(path: Path) -> dict:
    from poetgen.verse.prosody import scheme

    chars: Counter = Counter()
    lines = 0
    forms: Counter = Counter()
    quatrains = rhyming = 0
    ps = scheme("pingshui")
    for line in iter_lines(path):
        lines += 1
        chars.update(line)
        form, _ = regular_form(line)
        forms[form or "other"] += 1
        if form in ("5x4", "7x4"):
            verse = split_verse(line)
            quatrains += 1
            rhyming += bool(set(ps.groups(verse[1][-1])) & set(ps.groups(verse[3][-1])))
    total = sum(chars.values())
    if total == 0:
        raise CorpusError(f"{path}: the file is empty")
    ranked = sorted(chars.values(), reverse=True)

    def cover(share: float) -> int:
        acc = 0
        for i, n in enumerate(ranked, 1):
            acc += n
            if acc >= share * total:
                return i
        return len(ranked)

    return {"file": str(path), "characters": total + lines, "lines": lines,
            "vocabulary": len(chars) + (1 if lines else 0),
            "chars_for_99pct": cover(0.99), "chars_for_99_9pct": cover(0.999),
            "forms": dict(forms.most_common()), "quatrains": quatrains,
            "quatrain_rhyme_rate_pingshui": round(rhyming / quatrains, 4) if quatrains else None}


# --------------------------------------------------------------------------------------------
# Fetching


def manifest(path: Path | None = None) -> dict:
    """Known sources: name -> {url, sha256, members, build}.

    Read from `path`, else ./corpora/manifest.toml (a project's own list), else the list that
    ships with poetgen (poetgen/data/sources.toml), so `corpus fetch tang` works after any install.
    """
    candidates = [path] if path else [Path("corpora/manifest.toml"),
                                      Path(__file__).resolve().parents[1] / "data" / "sources.toml"]
    for p in candidates:
        if p.exists():
            try:
                return tomllib.loads(p.read_text("utf-8"))["source"]
            except (tomllib.TOMLDecodeError, KeyError) as e:
                raise CorpusError(f"{p}: not a valid manifest ({e})") from None
    raise CorpusError("no list of sources found (poetgen/data/sources.toml is missing from this "
                      "install); pass --manifest FILE or give --url")


def download(url: str, dest: Path, sha256: str | None, progress_factory=None,
             timeout: float = 30.0) -> Path:
    """Download `url` to `dest`, resuming a partial `dest.part`; verify sha256; atomic rename."""
    import urllib.error
    import urllib.parse
    import urllib.request

    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise CorpusError(f"--url {url!r} is no address to download from; give an http(s):// "
                          "URL")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = response.status == 206
                if have and not resumed:  # the server ignored Range: start over
                    have = 0
                total = response.headers.get("Content-Length")
                total = int(total) + have if total is not None else None
                bar = progress_factory(total, have) if progress_factory else None
                with part.open("ab" if resumed else "wb") as f:
                    while True:
                        block = response.read(1 << 16)
                        if not block:
                            break
                        f.write(block)
                        if bar:
                            bar.update(len(block))
                if bar:
                    bar.close()
                if total is not None and part.stat().st_size < total:
                    continue  # the connection ended early: resume
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch
                break
            raise CorpusError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            if attempt == 4:
                raise CorpusError(f"download of {url} failed: {getattr(e, 'reason', e)}; run the "
                                  f"same command again to resume ({part} is kept)") from None
    if sha256:
        digest = _sha256(part)
        if digest != sha256:
            part.unlink()
            raise CorpusError(f"{url}: checksum mismatch (got sha256 {digest}, expected {sha256}); "
                              "the partial file was removed: try again, or check the --url")
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_members(archive: Path, pattern: str, dest: Path) -> list[Path]:
    """Extract the archive members matching a glob (e.g. 'package/dist/quantangshi/poet.tang.*.json')."""
    import fnmatch

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        with tarfile.open(archive) as tar:
            for m in tar:
                if m.isfile() and fnmatch.fnmatch(m.name, pattern):
                    target = dest / Path(m.name).name  # flatten: never write outside dest
                    with tar.extractfile(m) as src:
                        target.write_bytes(src.read())
                    out.append(target)
    except tarfile.TarError as e:
        raise CorpusError(f"{archive}: not a readable archive ({e})") from None
    if not out:
        raise CorpusError(f"{archive}: no member matches {pattern}")
    return out
