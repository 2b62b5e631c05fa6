"""Text documents: decoding rules and the chunking rule."""

from __future__ import annotations

import pytest

from retrv.index.documents import CHUNK_CHARS, MAX_CHUNKS, chunk_text, decode_text, parse_document
from retrv.scan import EMPTY_FILE, NOT_UTF8, SkipFile


def test_paragraphs_are_packed_whole():
    text = "First para.\n\nSecond para.\n  \nThird\nline wraps."
    assert chunk_text(text, chunk_chars=1000) == ["First para.\n\nSecond para.\n\nThird line wraps."]
    assert chunk_text(text, chunk_chars=25) == ["First para.\n\nSecond para.", "Third line wraps."]


def test_long_paragraph_is_cut_at_sentences_then_spaces():
    sentence = "The quick brown fox jumps over the lazy dog. "
    chunks = chunk_text(sentence * 50, chunk_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert chunks[0] == (sentence * 2).strip()  # two whole sentences (90 chars) fit in 100
    one_word = "x" * 250
    assert chunk_text(one_word, chunk_chars=100) == ["x" * 100, "x" * 100, "x" * 50]
    words = chunk_text("word " * 100, chunk_chars=30, max_chunks=100)
    assert all(set(c.split(" ")) == {"word"} and len(c) <= 30 for c in words)  # no word is cut
    assert sum(len(c.split()) for c in words) == 100


def test_at_most_max_chunks():
    text = "\n\n".join(f"paragraph {i} " + "y" * 900 for i in range(40))
    chunks = chunk_text(text)
    assert len(chunks) == MAX_CHUNKS and all(len(c) <= CHUNK_CHARS for c in chunks)
    assert chunks[-1].startswith(f"paragraph {MAX_CHUNKS - 1} ")


def test_decode_rules():
    assert decode_text("\ufeffhé".encode()) == "hé"
    with pytest.raises(SkipFile) as bad:
        decode_text("né".encode("latin-1"))
    assert bad.value.reason == NOT_UTF8 and "0xe9 at offset 1" in bad.value.detail
    with pytest.raises(SkipFile) as binary:
        decode_text(b"abc\x00def")
    assert binary.value.reason == NOT_UTF8
    with pytest.raises(SkipFile) as blank:
        decode_text(b"  \n ")
    assert blank.value.reason == EMPTY_FILE
    cut = "aé".encode()[:2]  # the cap fell inside "é"
    assert decode_text(cut, truncated=True) == "a"
    with pytest.raises(SkipFile):
        decode_text(cut)  # not truncated by us: the file itself is broken


def test_a_capped_document_is_truncated_and_previewed():
    doc = parse_document(("  " + "z" * 2000).encode()[:1200], truncated=True)
    assert doc.truncated and doc.preview == "z" * 500
    assert sum(len(c) for c in doc.chunks) == 1198
    assert parse_document(b"short").preview == "short" and not parse_document(b"short").truncated
