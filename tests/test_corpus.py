import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from poetgen.lm.config import TrainConfig
from poetgen.lm.corpus import (UNK, Streams, Vocab, encode_tensor, iter_text, lines_with_ends,
                               prepare, read_text, split_lines)
from poetgen.errors import CorpusError, PoetgenError

VOCAB_TEXT = "床前明月光，疑是地上霜。\nHello, world! 🌙\n"


@pytest.mark.parametrize("text", ["", "a", "月", "床前明月光，疑是地上霜。\n", "🌙🌕 moon", "\n\n", "Hello, world! 🌙"])
def test_vocab_round_trip(text):
    vocab = Vocab.build(VOCAB_TEXT + text)
    assert vocab.decode(vocab.encode(text)) == text


@pytest.mark.parametrize("text, unknown", [("李白", ["李", "白"]), ("月X月", ["X"]), ("😀", ["😀"]), ("", [])])
def test_unknown_characters_map_to_unk(text, unknown):
    vocab = Vocab.build(VOCAB_TEXT)
    assert vocab.unknown(text) == unknown
    decoded = vocab.decode(vocab.encode(text))
    assert decoded.count(UNK) == sum(text.count(c) for c in unknown)


def test_vocab_order_and_limits():
    vocab = Vocab.build("aaab bc\n")
    assert vocab.chars[0] == "a" and vocab.chars[-1] == UNK  # by frequency; UNK last
    assert "\n" in vocab and vocab.newline_id is not None
    assert Vocab.build("aaabbc", min_count=2).chars == ("a", "b", UNK)
    assert Vocab.build("aaabbc", max_size=2).chars == ("a", UNK)
    again = Vocab.from_list(list(vocab.chars))
    assert again == vocab


@given(st.text())
def test_vocab_round_trip_property(text):
    vocab = Vocab.build(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_read_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_bytes(b" \n\t\n")
    with pytest.raises(CorpusError, match="empty or only whitespace"):
        read_text(tmp_path / "blank.txt")
    with pytest.raises(CorpusError, match="directory"):
        read_text(tmp_path)


def test_invalid_utf8_names_line_and_byte(tmp_path):
    p = tmp_path / "gbk.txt"
    p.write_bytes("第一行\n".encode() + "第二行".encode("gbk") + b"\n")
    with pytest.raises(CorpusError) as e:
        read_text(p)
    msg = str(e.value)
    assert "byte 10" in msg and "line 2" in msg and "UTF-8" in msg and "gbk.txt" in msg


def test_invalid_utf8_across_chunks(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"a\nbb\n" * 100 + b"\xff")
    with pytest.raises(CorpusError, match="byte 500 \\(line 201"):
        list(iter_text(p, chunk_bytes=7))


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_newlines_normalised_even_across_chunks(tmp_path, chunk):
    p = tmp_path / "crlf.txt"
    p.write_bytes("\ufeff春\r\n江\r花\n月\r\n".encode())
    assert "".join(iter_text(p, chunk_bytes=chunk)) == "春\n江\n花\n月\n"


def test_split_lines_is_deterministic_and_disjoint():
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_lines(text, 0.1)
    assert split_lines(text, 0.1) == (train, val)
    assert 50 < val.count("\n") < 150
    assert not set(train.splitlines()) & set(val.splitlines())
    assert split_lines("one line only", 0.1)[1]  # falls back to a tail split


@pytest.mark.parametrize("as_memmap", [False, True])
def test_streams_layout(tmp_path, as_memmap):
    ids = torch.arange(26)  # 'a'..'z' -> 4 streams of 6, 2 dropped
    if as_memmap:  # a prepared corpus: read from the file, not from memory
        ids.numpy().astype("<u2").tofile(tmp_path / "ids")
        ids = np.memmap(tmp_path / "ids", dtype="<u2", mode="r")
    streams = Streams(ids, batch_size=4, bptt=2)
    assert streams.rows == 6 and len(streams) == 3  # rows 0-1, 2-3, 4 (its target is row 5)
    x, y = streams.chunk(0)
    assert x.dtype == torch.int64
    assert x.tolist() == [[0, 6, 12, 18], [1, 7, 13, 19]]  # each column is a contiguous stream
    assert y.tolist() == [[1, 7, 13, 19], [2, 8, 14, 20]]
    x, y = streams.chunk(2)
    assert x.tolist() == [[4, 10, 16, 22]] and y.tolist() == [[5, 11, 17, 23]]
    # A rank's share: the same values in its columns, nothing else.
    x, y = Streams(ids, batch_size=4, bptt=2, streams=range(2, 4)).chunk(1)
    assert x.tolist() == [[14, 20], [15, 21]] and y.tolist() == [[15, 21], [16, 22]]
    with pytest.raises(CorpusError, match="too few"):
        Streams(torch.arange(5), batch_size=4, bptt=2)


def test_split_lines_splits_only_at_newlines():
    text = "a\x0bb\nc\u2028d\ne"  # str.splitlines would also split at \x0b and U+2028
    assert lines_with_ends(text) == ["a\x0bb\n", "c\u2028d\n", "e"]
    assert lines_with_ends("a\n") == ["a\n"]


def test_fingerprint_and_tail_read_in_pieces(monkeypatch):
    import poetgen.lm.corpus as corpus

    vocab = Vocab.build("ab\n")
    ids = torch.tensor(vocab.encode("ab\nba\nbbb"))
    whole = corpus.fingerprint(ids)
    assert corpus.tail_after_newline(ids, vocab, 4).tolist() == vocab.encode("\nba\n")
    monkeypatch.setattr(corpus, "PIECE_TOKENS", 2)
    assert corpus.fingerprint(ids) == whole  # pieces hash as the whole does
    assert corpus.fingerprint(ids.numpy().astype("<u2")) == whole  # whatever the dtype
    assert corpus.fingerprint(ids[:-1]) != whole
    assert corpus.tail_after_newline(ids, vocab, 4).tolist() == vocab.encode("\nba\n")
    assert corpus.count_id(ids, vocab.id("b")) == 5


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_iter_lines_streams_lines_across_chunks(tmp_path, chunk):
    from poetgen.lm.corpus import iter_lines, iter_text

    p = tmp_path / "l.txt"
    p.write_text("春江\n\n花月夜\r\n最后一行", encoding="utf-8")
    import poetgen.lm.corpus as corpus

    original = corpus.iter_text
    corpus.iter_text = lambda path: iter_text(path, chunk_bytes=chunk)
    try:
        assert list(iter_lines(p)) == ["春江", "", "花月夜", "最后一行"]
    finally:
        corpus.iter_text = original


def test_prepare_holds_out_lines_and_builds_the_vocabulary_from_the_training_side(tmp_path):
    lines = [f"{chr(0x4E00 + i)}{i}" for i in range(300)]  # a character of its own on every line
    text = "\n".join(lines) + "\n"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    data = prepare(tmp_path / "c.txt", None, TrainConfig(val_fraction=0.1))
    train_text, val_text = split_lines(text, 0.1)
    assert data.train_ids.numel() == len(train_text) and data.val_ids.numel() == len(val_text)
    assert 10 < val_text.count("\n") < 60
    assert data.vocab == Vocab.build(train_text)  # held-out lines' own characters are unknown
    assert (data.val_ids == data.vocab.unk_id).sum() == val_text.count("\n")
    # A given vocabulary (a resumed run's) is kept; a --val file is used whole.
    (tmp_path / "v.txt").write_text(train_text[0] + "鑫\n", encoding="utf-8")
    kept = prepare(tmp_path / "c.txt", tmp_path / "v.txt", TrainConfig(), vocab=data.vocab)
    assert kept.vocab is data.vocab and kept.train_ids.numel() == len(text)
    assert kept.vocab.decode(kept.val_ids.tolist()) == train_text[0] + UNK + "\n"


def test_shuffle_lines_reorders_whole_lines():
    from poetgen.lm.corpus import shuffle_lines

    text = "春风\n花月夜\n\n江\n山水云"  # an empty line, and a last line without its newline
    vocab = Vocab.build(text)
    ids = encode_tensor(vocab, text)
    outs = {vocab.decode(shuffle_lines(ids, vocab.newline_id, seed).tolist()) for seed in range(20)}
    assert len(outs) > 5
    for out in outs:
        assert out.endswith("\n山水云") and sorted(out.split("\n")) == sorted(text.split("\n"))
    assert shuffle_lines(ids, None, 0) is ids


def test_file_ending_inside_a_character_is_one_clear_error(tmp_path):
    """Used to be an IndexError: the error lay in bytes held back from the previous chunk."""
    p = tmp_path / "cut.txt"
    p.write_bytes("好诗\n春".encode()[:-1])
    with pytest.raises(CorpusError, match="at byte 7 \\(line 2, column 1\\): the file ends inside a character "
                                          "\\(byte 0xe6\\)"):
        read_text(p)


@pytest.mark.parametrize("chunk", [4, 5, 6, 1 << 20])
def test_bad_byte_after_a_character_split_across_chunks_is_placed_exactly(tmp_path, chunk):
    """春 (3 bytes) straddles a chunk boundary, then 0xff: the offset and byte reported are the
    0xff's (they used to be counted from the held-back bytes: 'byte 1048579 (byte 0x9e)')."""
    data = b"abcd" + "春".encode() + b"\xff" + b"tail"
    p = tmp_path / "split.txt"
    p.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(CorpusError, match=f"at byte {bad} .*\\(byte 0xff\\)"):
        list(iter_text(p, chunk_bytes=chunk))


@pytest.mark.parametrize("chunk", [3, 4, 5, 1 << 20])
@pytest.mark.parametrize("data, line, column", [
    (b"ab\ncdefgh\xff", 2, 7),  # the line begins in one chunk, the bad byte lies in a later one
    (b"\xff", 1, 1),
    (b"abcdefg\xff\n", 1, 8),  # line 1: no newline before it in any chunk
    (b"a\nb\n\nxy\xff", 4, 3),
])
def test_a_bad_byte_is_placed_by_line_and_byte_column(tmp_path, chunk, data, line, column):
    p = tmp_path / "bad.txt"
    p.write_bytes(data)
    oracle = data.index(b"\xff")  # byte offset; the line and column counted independently:
    assert data[:oracle].count(b"\n") + 1 == line
    assert oracle - (data[:oracle].rfind(b"\n") + 1) + 1 == column
    with pytest.raises(CorpusError, match=f"at byte {oracle} \\(line {line}, column {column}\\)"):
        list(iter_text(p, chunk_bytes=chunk))


def test_devices_links_and_loops_are_refused(tmp_path):
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "gone.txt")
    with pytest.raises(CorpusError, match="not a regular file"):
        read_text("/dev/zero")  # used to be read until memory ran out
    with pytest.raises(PoetgenError, match="symbolic link loop"):
        read_text(loop)
    with pytest.raises(CorpusError, match="symbolic link to .*gone.txt, which does not exist"):
        read_text(dangling)
