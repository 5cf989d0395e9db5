"""The corpus on disk: download (checksummed, atomic, cached), find the files, read, encode to ids."""

import codecs
import contextlib
import glob
import hashlib
import http.client
import json
import logging
import mmap
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.files import write_atomically
from charrnn.vocab import Vocab

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # decode in slices so a gigabyte corpus never becomes one giant str
IDS_CACHE_FORMAT = 2  # in the cache key: bump when the encoding changes (old caches are ignored)
RACY_NS = 2_000_000_000  # a file changed this recently is hashed again next run (as git does)


def download(url: str, dest: Path, sha256: str | None, timeout: float = 30.0) -> Path:
    """Fetches `url` to `dest`, length and sha256 checked first: a failure leaves no file behind."""
    checksum = f" (sha256 {sha256})" if sha256 else ""
    by_hand = (
        f"download {url} yourself and save it as {dest}{checksum}, "
        "or train on your own text with data.path=/path/to/text.txt"
    )

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
                "closed early; nothing was cached); " + by_hand
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise CharRNNError(
                f"download of {url} has sha256 {digest.hexdigest()} but data.sha256 is {sha256} "
                "(a different or tampered file; nothing was cached); if you changed data.url, set "
                "data.sha256 to that file's checksum (or null to skip the check), otherwise "
                + by_hand
            )

    try:
        return write_atomically(dest, fetch)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise CharRNNError(f"could not download {url}: {_why(err, timeout)}; " + by_hand) from err


def _why(err: Exception, timeout: float) -> str:
    """What went wrong with a download, in words."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within data.download_timeout={timeout} s"
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed after {len(err.partial)} bytes, before the end of the file"
    return str(reason or err) or type(err).__name__


def locate_corpus(
    path: str | None, cache_dir: str, url: str, sha256: str | None, timeout: float = 30.0
) -> list[Path]:
    """The files to train on: the user's own `path`, or the verified cached download."""
    if path:
        return corpus_files(path)
    name = Path(urllib.parse.urlparse(url).path).name or "corpus.txt"
    if sha256 is None:  # unverified: cached under a name tied to the URL, never another URL's
        name = f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
        log.warning("data.sha256 is null: %s will be used without verifying its contents", url)
    cached = Path(cache_dir).expanduser() / name
    if cached.is_file():
        with open(cached, "rb") as f:
            if sha256 is None or hashlib.file_digest(f, "sha256").hexdigest() == sha256.lower():
                return [cached]
        log.warning("cached %s does not match data.sha256; downloading it again", cached)
    log.info("downloading %s to %s", url, cached)
    return [download(url, cached, sha256, timeout)]


def corpus_files(path: str) -> list[Path]:
    """data.path's non-empty files: the file itself, the files under a folder (recursively, sorted)
    or a glob's matches (sorted). Hidden files are skipped, the ids caches among them."""
    own = Path(path).expanduser()
    pattern = glob.escape(str(own)) + "/**/*" if own.is_dir() else str(own)
    files = [own] if own.is_file() else sorted(map(Path, glob.glob(pattern, recursive=True)))
    files = [p for p in files if p.is_file() and p.stat().st_size > 0]
    if not files:
        what = "has no text files" if own.is_dir() or glob.has_magic(path) else "does not exist"
        raise CharRNNError(
            f"data.path: {own} {'is empty' if own.is_file() else what}; pass a text file, a folder "
            "of them or a glob ('books/*.txt')"
        )
    return files


@contextlib.contextmanager
def _opened(path: Path):
    """The file open for reading; failing to read it is one line naming it."""
    try:
        with open(path, "rb") as f:
            yield f
    except OSError as err:
        raise CharRNNError(f"data.path: can't read {path} ({err.strerror}); leave it out") from None


def _decoded_slices(path: Path, encoding: str):
    """Yields the file's text as code-point arrays, a slice at a time, naming any bad byte."""
    size = path.stat().st_size
    decoder = codecs.getincrementaldecoder(encoding)()  # holds back a character split across reads
    with _opened(path) as f:
        while block := f.read(CHUNK_BYTES):
            start = f.tell() - len(block) - len(decoder.getstate()[0])  # held bytes come first
            try:
                text = decoder.decode(block, final=f.tell() >= size)
            except UnicodeDecodeError as err:
                raise CharRNNError(
                    f"data.path: {path} is not {encoding.upper()} text: byte offset "
                    f"{start + err.start} (0x{err.object[err.start]:02x}); convert it, or "
                    "set data.encoding to its encoding (e.g. latin-1, cp1252)"
                ) from None
            if "\0" in text:
                raise CharRNNError(f"data.path: {path} is a binary file (NUL bytes); leave it out")
            yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _joined(files: list[Path], separator: str, encoding: str):
    """The corpus as code-point slices: every file's text, with `separator` between files."""
    between = np.frombuffer(separator.encode("utf-32-le"), dtype=np.uint32)
    for i, path in enumerate(files):
        if i:
            yield between
        yield from _decoded_slices(path, encoding)


def ids_cache_path(files: list[Path], separator: str = "\n\n", encoding: str = "utf-8") -> Path:
    """Where the ids of this corpus are cached: a hidden .npy beside its first file, named by the
    sha256 of every file's content, the separator, the encoding and IDS_CACHE_FORMAT."""
    key = hashlib.sha256(f"charrnn ids {IDS_CACHE_FORMAT} {encoding} {separator!r}".encode())
    memo_path = files[0].with_name(f".{files[0].name}.digests.json")
    try:  # memo: a file at the size, mtime, inode it was hashed at is not read again (~0.6 s/GB)
        memo = {
            name: {stamp: digest}
            for name, entry in json.loads(memo_path.read_text()).items()
            for stamp, digest in entry.items()
            if isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)
        }
    except (OSError, ValueError, AttributeError):  # none yet, or not this shape: hash
        memo = {}
    fresh, started = {}, time.time_ns()  # before any file is read
    for path in files:
        stat, name = path.stat(), str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        digest = memo.get(name, {}).get(str(stamp))
        if digest is None:
            with _opened(path) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        if started - stat.st_mtime_ns > RACY_NS:  # else it may change within its mtime
            fresh[name] = {str(stamp): digest}
        key.update(bytes.fromhex(digest))
    if fresh != memo:
        with contextlib.suppress(OSError):  # a read-only folder: every run hashes again
            write_atomically(memo_path, lambda tmp: Path(tmp).write_text(json.dumps(fresh)))
    return files[0].with_name(f".{files[0].name}.{key.hexdigest()[:16]}.ids.npy")


def release_pages(ids: np.ndarray) -> None:
    """Unmaps what a read of memory-mapped ids faulted in (the page cache keeps it): the kernel maps
    a cached file's large folios whole, ~1 MB per window read, so RSS would grow ~100 MB a batch."""
    while isinstance(ids, np.ndarray):  # a view's base, down to the np.memmap's mmap
        ids = ids.base
    if isinstance(ids, mmap.mmap) and hasattr(ids, "madvise"):
        ids.madvise(mmap.MADV_DONTNEED)


def encode_corpus(
    files: list[Path], separator: str = "\n\n", encoding: str = "utf-8", cache: bool = True
) -> tuple[Vocab, np.ndarray]:
    """The joined files as vocabulary and ids (narrowest type) in two streamed passes; with `cache`
    the ids go straight into a .npy and come back memory-mapped: no run holds the corpus in RAM."""
    path = ids_cache_path(files, separator, encoding) if cache else None
    if path is not None and path.is_file():
        try:  # mapped read-only, seen as an ndarray (np.memmap indexes ~1 µs slower, in Python)
            chars = path.with_suffix(".vocab").read_bytes().decode("utf-8")
            return Vocab(chars), np.lib.format.open_memmap(path, mode="r").view(np.ndarray)
        except (OSError, ValueError, CharRNNError) as err:
            log.warning("ignoring the unreadable ids cache %s (%s); encoding again", path, err)
    seen, total = np.zeros(0x110000, dtype=bool), 0
    for codepoints in _joined(files, separator, encoding):
        seen[codepoints] = True
        total += len(codepoints)
    vocab = Vocab("".join(map(chr, np.flatnonzero(seen))))  # the code points that occur
    dtype = np.uint8 if vocab.size <= 256 else np.uint16 if vocab.size <= 65536 else np.int32
    table = (np.cumsum(seen) - 1).astype(dtype)  # code point -> id: its rank among those seen

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            header = np.lib.format.header_data_from_array_1_0(table[:0])
            np.lib.format.write_array_header_1_0(out, {**header, "shape": (total,)})
            for codepoints in _joined(files, separator, encoding):
                table[codepoints].tofile(out)

    if path is not None:
        chars = vocab.chars.encode("utf-8")
        try:  # the vocabulary first; a read-only folder only costs the speed-up
            write_atomically(path.with_suffix(".vocab"), lambda tmp: Path(tmp).write_bytes(chars))
            write_atomically(path, write)
        except OSError as err:
            log.info("not caching the encoded corpus (%s); it is encoded again next run", err)
        else:
            stale = re.escape(path.name.rsplit(".", 3)[0]) + r"\.[0-9a-f]{16}\.ids\.(npy|vocab)"
            for old in path.parent.iterdir():
                if old.stem != path.stem and re.fullmatch(stale, old.name):
                    old.unlink(missing_ok=True)  # the ids of an older version of this corpus
            log.info("cached the encoded corpus in %s", path)
            return vocab, np.lib.format.open_memmap(path, mode="r").view(np.ndarray)
    return vocab, np.concatenate([table[c] for c in _joined(files, separator, encoding)])
