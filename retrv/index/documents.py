"""Text documents (.txt, .md) as index items: reading, chunking, one vector per document.

Reading: the file is UTF-8 (a BOM is dropped); at most `max_text_bytes` are read, and a
multi-byte character cut by that cap is dropped. Bytes that are not UTF-8, NUL bytes (binary
data) or a file with nothing but whitespace make the document skipped with a reason.

The chunking rule. A document is one item with one vector:
1. Split the text into paragraphs at blank lines.
2. Pack whole paragraphs greedily into chunks of at most `CHUNK_CHARS` (1000) characters, about
   250 word pieces, inside MiniLM's 256-token window. A longer paragraph is cut at the last
   sentence end (". ", "! ", "? ") before the limit, else at the last space, else hard.
   Encoders with a shorter window (CLIP: 77 tokens) may advertise `max_text_chars`; the
   chunk size then follows it.
3. Embed the first `MAX_CHUNKS` (16) chunks, so the first ~16 000 characters speak for the
   document; average their vectors and L2-normalise the mean.
The item's `text` is the first `PREVIEW_CHARS` (500) characters: shown in results and given to
rerankers.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrv.scan import EMPTY_FILE, NOT_UTF8, SkipFile

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder

CHUNK_CHARS = 1000
MAX_CHUNKS = 16
PREVIEW_CHARS = 500

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


@dataclass(frozen=True)
class TextDocument:
    preview: str  # what the index stores as the item's text
    chunks: list[str]  # what the encoder embeds
    truncated: bool  # the file was longer than max_text_bytes


def decode_text(data: bytes, *, truncated: bool = False) -> str:
    """UTF-8 text of `data`, or `SkipFile` with the reason it is not a text document."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # The byte cap may cut the last character in half; only that is forgiven.
        if not (truncated and e.end == len(data) and e.start >= len(data) - 3 and e.reason == "unexpected end of data"):
            raise SkipFile(NOT_UTF8, f"invalid byte 0x{data[e.start]:02x} at offset {e.start}") from None
        text = data[: e.start].decode("utf-8")
    if "\x00" in text:
        raise SkipFile(NOT_UTF8, "contains NUL bytes (binary data)")
    if not text.strip():
        raise SkipFile(EMPTY_FILE, "no text" if text else "")
    return text


def chunk_text(text: str, chunk_chars: int = CHUNK_CHARS, max_chunks: int = MAX_CHUNKS) -> list[str]:
    """Paragraph-aware chunks of at most `chunk_chars` characters, at most `max_chunks` of them."""
    text = text[: chunk_chars * max_chunks * 2]  # enough for max_chunks chunks; the rest is never embedded
    chunks: list[str] = []
    current = ""
    for paragraph in _PARAGRAPH_BREAK.split(text):
        for piece in _split_long(" ".join(paragraph.split()), chunk_chars):
            if current and len(current) + 2 + len(piece) > chunk_chars:
                chunks.append(current)
                if len(chunks) == max_chunks:
                    return chunks
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks[:max_chunks]


def _split_long(paragraph: str, limit: int) -> list[str]:
    pieces: list[str] = []
    rest = paragraph
    while len(rest) > limit:
        window = rest[: limit + 1]
        ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        cut = ends[-1] if ends else window.rfind(" ") + 1
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces


def parse_document(
    data: bytes, *, truncated: bool = False, chunk_chars: int = CHUNK_CHARS, max_chunks: int = MAX_CHUNKS
) -> TextDocument:
    text = decode_text(data, truncated=truncated)
    return TextDocument(text.strip()[:PREVIEW_CHARS], chunk_text(text, chunk_chars, max_chunks), truncated)


def chunk_chars_for(encoder: Encoder) -> int:
    return int(getattr(encoder, "max_text_chars", None) or CHUNK_CHARS)


def embed_documents(encoder: Encoder, documents: list[TextDocument]) -> np.ndarray:
    """One L2-normalised vector per document: the mean of its chunks' vectors (one model call)."""
    import numpy as np

    flat = [chunk for doc in documents for chunk in doc.chunks]
    chunk_vectors = np.asarray(encoder.encode_texts(flat), dtype=np.float32)
    out = np.empty((len(documents), chunk_vectors.shape[1]), dtype=np.float32)
    start = 0
    for i, doc in enumerate(documents):
        mean = chunk_vectors[start : start + len(doc.chunks)].mean(axis=0)
        out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        start += len(doc.chunks)
    return out
