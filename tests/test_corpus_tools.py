"""Corpus tools: building from chinese-poetry JSON, stats, and fetching from a local HTTP server."""

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from poetgen.app.cli import cli
from poetgen.verse.corpus_tools import (EXCLUDED, OTHER, BuildOptions, build_corpus, corpus_stats,
                                        iter_json_array, read_segment_hashes, regular_form,
                                        segment_hash, strip_notes, verse_segments)
from poetgen.errors import CorpusError

from conftest import SHARED

POEMS = [  # traditional characters, as chinese-poetry ships them
    {"paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"], "id": "a"},
    {"paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"], "id": "dup"},
    {"paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月（一作「山月」），低頭思故鄉。"], "id": "note"},
    {"paragraphs": ["朝辭白帝彩雲間，千里江陵一日還。", "兩岸猿聲啼不住，輕舟已過萬重山。"], "id": "b"},
    {"paragraphs": ["君不見黃河之水天上來，奔流到海不復回。"], "id": "irregular"},
    {"paragraphs": ["春眠不覺曉，處處聞啼鳥。"], "id": "short"},
    {"paragraphs": ["□□□□□，處處聞啼鳥。", "夜來風雨聲，花落知多少。"], "id": "lacuna"},
]


@pytest.fixture
def json_dir(tmp_path):
    d = tmp_path / "cp"
    d.mkdir()
    (d / "poet.tang.0.json").write_text(json.dumps(POEMS[:4], ensure_ascii=False, indent=4), encoding="utf-8")
    (d / "poet.tang.1000.json").write_text(json.dumps(POEMS[4:], ensure_ascii=False), encoding="utf-8")
    return d


def test_build_filters_converts_dedupes_and_reports(json_dir, tmp_path):
    out = tmp_path / "out.txt"
    r = build_corpus([json_dir], out, BuildOptions(forms=frozenset({"5x4", "7x4"}), simplified=True,
                                                dedupe=True, strip_notes=True))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
                     "床前明月光，疑是地上霜。举头望明月，低头思故乡。",  # the note was removed
                     "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"]
    assert r.read == 7 and r.kept == 3
    assert r.dropped == {"duplicate": 1, "line count not 4 or 8": 2, "odd characters": 1}
    only7 = build_corpus([json_dir], tmp_path / "o7.txt", BuildOptions(forms=frozenset({"7x4"}), simplified=True))
    assert only7.kept == 1 and only7.dropped["form 5x4 not selected"] == 2


def test_split_keeps_variants_together(tmp_path):
    src = tmp_path / "poems.txt"
    poems = [f"{a}山{b}水流，白云{a}{b}秋。明月照高楼，清风{a}满舟。" for a in "春夏秋冬东西南北" for b in "江河湖海"]
    variant = poems[0].replace("白云", "青云")  # shares three verse lines with poems[0]
    src.write_text("\n".join(poems + [variant]) + "\n", encoding="utf-8")
    build_corpus([src], tmp_path / "c.txt", BuildOptions(val_fraction=0.3))
    train = (tmp_path / "c_train.txt").read_text(encoding="utf-8").splitlines()
    val = (tmp_path / "c_val.txt").read_text(encoding="utf-8").splitlines()
    assert len(train) + len(val) == len(poems) + 1
    assert (poems[0] in val) == (variant in val)
    again = tmp_path / "again.txt"
    build_corpus([src], again, BuildOptions(val_fraction=0.3))
    assert (tmp_path / "again_val.txt").read_text(encoding="utf-8").splitlines() == val


def test_malformed_json_names_file_and_position(tmp_path):
    bad = tmp_path / "poet.tang.0.json"
    bad.write_text('[\n  {"paragraphs": ["a"]},\n  {"paragraphs": ["b",]}\n]', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"poet.tang.0.json: malformed JSON at line 3, column \d+"):
        list(iter_json_array(bad))
    (tmp_path / "obj.json").write_text('{"paragraphs": []}')
    with pytest.raises(CorpusError, match="expected a JSON array"):
        list(iter_json_array(tmp_path / "obj.json"))
    (tmp_path / "cut.json").write_text('[{"paragraphs": ["a"]}, {"parag')
    with pytest.raises(CorpusError, match="malformed JSON"):
        list(iter_json_array(tmp_path / "cut.json", chunk=4))


def test_streaming_reads_objects_across_chunk_boundaries(json_dir):
    objs = list(iter_json_array(json_dir / "poet.tang.0.json", chunk=7))
    assert [o["id"] for o in objs] == ["a", "dup", "note", "b"]


@pytest.mark.parametrize("text, form", [
    ("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "5x4"), ("白日依山尽，黄河入海流。", None),
    ("白日依山尽。黄河入海流，欲穷千里目，更上一层楼。", None), ("白日依山尽，黄河入海流。欲穷千里目，更上一层楼", None),
])
def test_regular_form(text, form):
    assert regular_form(text)[0] == form


def test_strip_notes():
    assert strip_notes("舉頭望明月（一作「山月」），低頭〖1〗思故鄉[補]。") == "舉頭望明月，低頭思故鄉。"


def test_stats(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n白日依山尽，黄河入海流。欲穷千里目，更上一层天。\nhello\n",
                 encoding="utf-8")
    s = corpus_stats(f)
    assert s["lines"] == 3 and s["forms"] == {"5x4": 2, "other": 1}
    assert s["quatrains"] == 2 and s["quatrain_rhyme_rate_pingshui"] == 0.5
    assert s["characters"] == 24 * 2 + 5 + 3
    r = CliRunner().invoke(cli, ["corpus", "stats", str(f), "--json"])
    assert json.loads(r.stdout)["vocabulary"] == s["vocabulary"]


# ------------------------------------------------------------------------------------------
# fetch, against a local server

def make_archive(json_dir) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(json_dir.iterdir()):
            tar.add(p, arcname=f"package/dist/quantangshi/{p.name}")
        readme = io.BytesIO(b"not a poem")
        info = tarfile.TarInfo("package/README.md")
        info.size = 10
        tar.addfile(info, readme)
    return buf.getvalue()


@pytest.fixture
def server(json_dir):
    """Serves the archive with Range support; the first full request is cut off half-way."""
    payload = make_archive(json_dir)
    state = {"requests": [], "cut_first": True}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"].append(self.headers.get("Range"))
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            else:
                self.send_response(200)
            body = payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state["cut_first"] and start == 0:
                state["cut_first"] = False
                self.wfile.write(body[: len(body) // 2])  # then the connection drops
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cp.tgz", hashlib.sha256(payload).hexdigest(), state
    httpd.shutdown()


def write_manifest(tmp_path, url, sha):
    m = tmp_path / "manifest.toml"
    m.write_text(f'[source.tiny]\nurl = "{url}"\nsha256 = "{sha}"\n'
                 'members = "package/dist/quantangshi/poet.tang.*.json"\n'
                 'build = {{ forms = "5x4,5x8,7x4,7x8", simplified = true, dedupe = true }}\n'.replace("{{", "{").replace("}}", "}"),
                 encoding="utf-8")
    return m


def test_fetch_resumes_an_interrupted_download_and_builds(server, tmp_path):
    url, sha, state = server
    m = write_manifest(tmp_path, url, sha)
    r = CliRunner().invoke(cli, ["corpus", "fetch", "tiny", "--manifest", str(m), "--dest", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert state["requests"][0] is None and state["requests"][1].startswith("bytes=")  # resumed
    assert "wrote" in r.stdout
    lines = (tmp_path / "c" / "tiny.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith("白日依山尽")  # the poem with a note is dropped
    assert not list((tmp_path / "c" / "downloads").glob("*.part"))


def test_fetch_wrong_checksum_is_refused(server, tmp_path):
    url, sha, state = server
    state["cut_first"] = False
    m = write_manifest(tmp_path, url, "0" * 64)
    r = CliRunner().invoke(cli, ["corpus", "fetch", "tiny", "--manifest", str(m), "--dest", str(tmp_path / "c")])
    assert r.exit_code == 1 and "checksum mismatch" in r.output
    assert not (tmp_path / "c" / "downloads" / "cp.tgz").exists()
    assert not list((tmp_path / "c" / "downloads").glob("*.part"))


def test_fetch_unknown_name_and_unreachable_url(tmp_path):
    m = write_manifest(tmp_path, "http://127.0.0.1:9/x.tgz", "0" * 64)
    r = CliRunner().invoke(cli, ["corpus", "fetch", "nope", "--manifest", str(m)])
    assert r.exit_code == 1 and "unknown source 'nope'; known: tiny" in r.output
    r = CliRunner().invoke(cli, ["corpus", "fetch", "tiny", "--manifest", str(m), "--dest", str(tmp_path / "d")])
    assert r.exit_code == 1 and "download of http://127.0.0.1:9/x.tgz failed" in r.output


def test_build_cli_errors(tmp_path):
    r = CliRunner().invoke(cli, ["corpus", "build", str(tmp_path / "missing"), "-o", str(tmp_path / "o.txt")])
    assert r.exit_code == 1 and "not found" in r.output


@pytest.mark.skipif(not (SHARED / "corpora" / "chinese-poetry").exists(),
                    reason="needs ../shared/corpora/chinese-poetry (the raw collection)")
def test_build_reproduces_the_shared_tang_corpus(tmp_path):
    pytest.importorskip("opencc")
    out = tmp_path / "tang.txt"
    options = BuildOptions(forms=frozenset({"5x4", "5x8", "7x4", "7x8"}), simplified=True, dedupe=True)
    report = build_corpus([SHARED / "corpora" / "chinese-poetry"], out, options)
    ours = out.read_text(encoding="utf-8").splitlines()
    shared = (SHARED / "corpora" / "tang.txt").read_text(encoding="utf-8").splitlines()
    assert report.kept == len(shared) == 35297 and set(ours) == set(shared)
    assert report.forms == {"5x4": 3631, "5x8": 13896, "7x4": 10078, "7x8": 7692}


def test_the_list_of_sources_ships_with_the_package(tmp_path, monkeypatch):
    from poetgen.verse.corpus_tools import manifest

    monkeypatch.chdir(tmp_path)  # no corpora/manifest.toml here: the packaged list is used
    tang = manifest()["tang"]
    assert tang["url"].startswith("https://registry.npmjs.org/chinese-poetry/")
    assert len(tang["sha256"]) == 64 and tang["build"]["simplified"] is True
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "manifest.toml").write_text('[source.mine]\nurl = "http://x/y.tgz"\n')
    assert list(manifest()) == ["mine"]  # a project's own list takes precedence


def _hashes(tmp_path, *segments):
    path = tmp_path / "held_out.sha256"
    path.write_text("".join(hashlib.sha256(s.encode()).hexdigest() + "\n" for s in segments))
    return path


@pytest.mark.parametrize("segment", [
    "疑是地上霜",  # a plain verse segment of the poem
    "举头望明月（一作「山月」）",  # a segment of the text as shipped, note and all
    "举头望明月",  # a segment of the cleaned text (--strip-notes)
])
def test_exclude_drops_every_poem_sharing_a_listed_segment(json_dir, tmp_path, segment):
    pytest.importorskip("opencc")
    options = BuildOptions(simplified=True, dedupe=True, strip_notes=True,
                           exclude=_hashes(tmp_path, segment))
    report = build_corpus([json_dir], tmp_path / "out.txt", options)
    kept = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert "举头望明月" not in kept and report.dropped[EXCLUDED] == 1
    assert "白日依山尽" in kept and "朝辞白帝彩云间" in kept  # the others stay


def test_exclude_matches_simplified_segments_of_a_traditional_build(json_dir, tmp_path):
    pytest.importorskip("opencc")
    report = build_corpus([json_dir], tmp_path / "out.txt",
                          BuildOptions(exclude=_hashes(tmp_path, "黄河入海流")))
    kept = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert report.dropped[EXCLUDED] == 2  # the poem and its duplicate (no --dedupe here)
    assert "白日依山盡" not in kept and "朝辭白帝彩雲間" in kept  # kept as shipped: traditional
    with pytest.raises(CorpusError, match="line 2.*not a SHA-256"):
        (tmp_path / "bad.sha256").write_text("0" * 64 + "\nnot a hash\n")
        build_corpus([json_dir], tmp_path / "o.txt", BuildOptions(exclude=tmp_path / "bad.sha256"))


def test_verse_segments_follow_the_held_out_lists_definition():
    assert verse_segments("白日依山尽，黄河入海流。欲穷 千里目？更上一层楼！") == [
        "白日依山尽", "黄河入海流", "更上一层楼"]  # 欲穷 and 千里目 are too short
    assert verse_segments("一二三四，五六七；八九十百千、万亿 兆京垓秭：") == [
        "一二三四", "八九十百千", "兆京垓秭"]


def test_form_other_keeps_only_poems_that_are_not_regular_verse(json_dir, tmp_path):
    pytest.importorskip("opencc")
    report = build_corpus([json_dir], tmp_path / "out.txt",
                          BuildOptions(forms=frozenset({OTHER}), simplified=True))
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == [
        "床前明月光，疑是地上霜。举头望明月（一作「山月」），低头思故乡。",  # a note: irregular
        "君不见黄河之水天上来，奔流到海不复回。", "春眠不觉晓，处处闻啼鸟。",
        "□□□□□，处处闻啼鸟。夜来风雨声，花落知多少。"]
    assert report.dropped["form 5x4 not selected"] == 2 and report.forms == {OTHER: 4}
    r = CliRunner().invoke(cli, ["corpus", "build", str(json_dir), "-o", str(tmp_path / "c.txt"),
                                 "--form", "other,七绝", "--simplified"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "c.txt").read_text(encoding="utf-8").splitlines()) == 5


@pytest.mark.skipif(not (SHARED / "corpora" / "heldout_lines.sha256").exists(),
                    reason="needs ../shared/corpora (chinese-poetry, tang.jsonl, heldout_lines.sha256)")
def test_a_build_with_the_held_out_list_keeps_no_held_out_poem(tmp_path):
    """The raw Tang collection holds the val poems; a build with --exclude keeps none of them."""
    pytest.importorskip("opencc")
    corpora = SHARED / "corpora"
    files = [corpora / "chinese-poetry" / f"poet.tang.{n}.json" for n in range(0, 10000, 1000)]
    out = tmp_path / "pretrain.txt"
    report = build_corpus(files, out, BuildOptions(simplified=True, dedupe=True, strip_notes=True,
                                                   exclude=corpora / "heldout_lines.sha256"))
    held_out = read_segment_hashes(corpora / "heldout_lines.sha256")
    kept = out.read_text(encoding="utf-8").splitlines()
    assert not [p for p in kept if any(segment_hash(s) in held_out for s in verse_segments(p))]
    names = {f.name for f in files}
    val = [json.loads(line) for line in (corpora / "tang.jsonl").open(encoding="utf-8")]
    # Val poems of these files (those with a segment of 4+ characters, which the list can hold:
    # 2,780 of all 2,793; the others are 3-character verse or a lone "。").
    val = [p["text_simplified"] for p in val if p["split"] == "val" and p["source_file"] in names
           and verse_segments(p["text_simplified"])]
    assert len(val) > 400 and report.dropped[EXCLUDED] >= len(val)
    assert not set(val) & set(kept)


def test_fetch_without_opencc_says_so_before_downloading(server, tmp_path, monkeypatch):
    import sys

    url, sha, state = server
    monkeypatch.setitem(sys.modules, "opencc", None)  # `import opencc` raises ImportError
    m = write_manifest(tmp_path, url, sha)  # its build asks for simplified text
    r = CliRunner().invoke(cli, ["corpus", "fetch", "tiny", "--manifest", str(m), "--dest", str(tmp_path / "c")])
    assert r.exit_code == 1 and "--simplified needs OpenCC" in r.output
    assert state["requests"] == [] and not (tmp_path / "c").exists()
