"""The corpus on disk: download (checksummed, atomic, cached), read and encode to ids."""

from __future__ import annotations

import codecs
import hashlib
import http.client
import logging
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.files import write_atomically
from charrnn.vocab import Vocab

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # decode in slices so a 100 MB corpus never becomes one giant str
CACHE_MIN_BYTES = 4 << 20  # smaller corpora encode in well under a second: not worth a file
IDS_CACHE_FORMAT = 1  # bump when the encoding changes, so old caches are ignored


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(url: str, dest: Path, sha256: str | None) -> str:
    checksum = f" (sha256 {sha256})" if sha256 else ""
    return (
        f"download {url} yourself and save it as {dest}{checksum}, "
        "or train on your own text with data.path=/path/to/text.txt"
    )


def download(url: str, dest: Path, sha256: str | None, timeout: float = 30.0) -> Path:
    """Fetches `url` to `dest`, verifying length and sha256 before the file lands there.

    Whatever goes wrong, nothing is left at `dest` or beside it.
    """

    def fetch(tmp: str) -> None:
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                received += len(block)
        if expected is not None and received != int(expected):
            raise CharRNNError(
                f"download of {url} stopped after {received} of {expected} bytes (the connection "
                "closed early; nothing was cached); " + _by_hand(url, dest, sha256)
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise CharRNNError(
                f"download of {url} has sha256 {digest.hexdigest()} but data.sha256 is {sha256} "
                "(a different or tampered file; nothing was cached); if you changed data.url, set "
                "data.sha256 to that file's checksum (or null to skip the check), otherwise "
                + _by_hand(url, dest, sha256)
            )

    try:
        return write_atomically(dest, fetch)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise CharRNNError(
            f"could not download {url}: {_why(err, timeout)}; " + _by_hand(url, dest, sha256)
        ) from err


def _why(err: Exception, timeout: float) -> str:
    """What went wrong with a download, in words."""
    reason = getattr(err, "reason", None) if isinstance(err, urllib.error.URLError) else err
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within data.download_timeout={timeout} s"
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed after {len(err.partial)} bytes, before the end of the file"
    return str(reason or err) or type(err).__name__


def locate_corpus(
    path: str | None, cache_dir: str, url: str, sha256: str | None, timeout: float = 30.0
) -> Path:
    """The corpus file to train on: the user's own `path`, or the verified cached download."""
    if path:
        own = Path(path).expanduser()
        if own.is_dir():
            raise CharRNNError(f"data.path: {own} is a directory; pass a UTF-8 text file")
        if not own.is_file():
            raise CharRNNError(f"data.path: {own} does not exist; pass an existing UTF-8 text file")
        return own
    name = Path(urllib.parse.urlparse(url).path).name or "corpus.txt"
    if sha256 is None:
        # unverified: cache under a name tied to the URL, so another URL's file is never reused
        name = f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
        log.warning("data.sha256 is null: %s will be used without verifying its contents", url)
    cached = Path(cache_dir).expanduser() / name
    if cached.is_file():
        if sha256 is None or sha256_file(cached) == sha256.lower():
            return cached
        log.warning("cached %s does not match data.sha256; downloading it again", cached)
    log.info("downloading %s to %s", url, cached)
    return download(url, cached, sha256, timeout)


def _decoded_slices(path: Path):
    """Yields the file's text as code-point arrays, slice by slice, naming the byte of any bad UTF-8."""
    size = path.stat().st_size
    if size == 0:
        raise CharRNNError(
            f"data.path: {path} is empty; pass a UTF-8 text file with some text in it"
        )
    decoder = codecs.getincrementaldecoder("utf-8")()  # holds back a character split across reads
    with open(path, "rb") as f:
        read = 0  # bytes before this block
        while block := f.read(CHUNK_BYTES):
            held = len(decoder.getstate()[0])  # bytes before this block that the decoder holds
            try:
                text = decoder.decode(block, final=f.tell() >= size)
            except UnicodeDecodeError as err:
                raise CharRNNError(
                    f"{path} is not UTF-8 text: byte offset {read - held + err.start} "
                    f"(0x{err.object[err.start]:02x}); convert it to UTF-8 first"
                ) from None
            yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            read += len(block)


def _encode(path: Path, vocab: Vocab | None) -> tuple[Vocab, np.ndarray]:
    """Two vectorised passes: the set of code points → vocabulary, then a table gather per slice."""
    seen, total = np.zeros(0x110000, dtype=bool), 0
    for codepoints in _decoded_slices(path):
        seen[codepoints] = True
        total += len(codepoints)
    vocab = vocab or Vocab.from_counts(seen)
    dtype = np.uint8 if vocab.size <= 256 else np.uint16 if vocab.size <= 65536 else np.int32
    table = np.full(0x110000, vocab.unk_id, dtype=dtype)  # code point -> id, over all of Unicode
    known = np.frombuffer(vocab.chars.encode("utf-32-le"), dtype=np.uint32)
    table[known] = np.arange(len(known), dtype=dtype)
    ids = np.empty(total, dtype=dtype)
    at = 0
    for codepoints in _decoded_slices(path):
        ids[at : at + len(codepoints)] = table[codepoints]
        at += len(codepoints)
    return vocab, ids


def ids_cache_path(path: Path, digest: str) -> Path:
    """Where the encoded ids of the corpus with this sha256 are cached: beside the corpus."""
    return path.with_name(f"{path.name}.{digest[:16]}.ids.npz")


def _load_ids(cache: Path) -> tuple[Vocab, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if int(saved["format"]) != IDS_CACHE_FORMAT:
                return None
            chars = saved["chars"].astype(np.uint32).tobytes().decode("utf-32-le")
            return Vocab(chars), saved["ids"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, CharRNNError) as err:
        log.warning("ignoring the unreadable ids cache %s (%s); encoding again", cache, err)
        return None


def _save_ids(path: Path, digest: str, vocab: Vocab, ids: np.ndarray) -> None:
    """Writes the cache; a read-only corpus directory only costs the speed-up."""
    cache = ids_cache_path(path, digest)
    chars = np.frombuffer(vocab.chars.encode("utf-32-le"), dtype=np.uint32)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as out:  # a file object: np.savez would add .npz to a name
            np.savez(out, format=IDS_CACHE_FORMAT, chars=chars, ids=ids)

    try:
        write_atomically(cache, save)
    except OSError as err:
        log.info("not caching the encoded corpus beside it (%s); it is encoded again next run", err)
        return
    stale = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}\.ids\.npz")
    for old in cache.parent.iterdir():
        if old != cache and stale.fullmatch(old.name):
            old.unlink(missing_ok=True)  # the ids of an older version of this corpus
    log.info("cached the encoded corpus in %s", cache)


def encode_file(
    path: Path, vocab: Vocab | None = None, cache: bool = True
) -> tuple[Vocab, np.ndarray]:
    """The corpus as a vocabulary and ids, in the narrowest unsigned type that holds the ids.

    With `cache` (and no given vocabulary), a corpus of CACHE_MIN_BYTES or more is encoded once: the
    ids are kept beside it keyed by its sha256, so a later run only reads them back.
    """
    path = Path(path)
    if vocab is not None or not cache or path.stat().st_size < CACHE_MIN_BYTES:
        return _encode(path, vocab)
    digest = sha256_file(path)
    cached = _load_ids(ids_cache_path(path, digest))
    if cached is not None:
        return cached
    vocab, ids = _encode(path, None)
    _save_ids(path, digest, vocab, ids)
    return vocab, ids
