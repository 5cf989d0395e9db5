"""The download path against a real HTTP server on 127.0.0.1: success, HTTP error, tampering."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from charrnn.corpus import locate_corpus
from charrnn.errors import CharRNNError

BODY = b"A small text of our own, served over HTTP.\n" * 100
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        if self.path == "/text.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/tampered.txt":
            body = BODY.replace(b"small", b"SMALL")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.hits = 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_caches_and_then_skips_the_network(server, tmp_path: Path):
    path = locate_corpus(None, str(tmp_path / "cache"), f"{server}/text.txt", SHA)
    assert path == tmp_path / "cache" / "text.txt" and path.read_bytes() == BODY
    assert _Handler.hits == 1
    assert locate_corpus(None, str(tmp_path / "cache"), f"{server}/text.txt", SHA) == path
    assert _Handler.hits == 1  # the verified cached copy is used, no second request
    assert [p.name for p in path.parent.iterdir()] == ["text.txt"]  # no temp files left


def test_http_error_leaves_nothing_and_says_how_to_supply_the_file(server, tmp_path: Path):
    cache = tmp_path / "cache"
    with pytest.raises(CharRNNError, match="could not download .*404.*save it as .*missing.txt"):
        locate_corpus(None, str(cache), f"{server}/missing.txt", SHA)
    assert list(cache.iterdir()) == []


def test_checksum_mismatch_caches_nothing(server, tmp_path: Path):
    cache = tmp_path / "cache"
    with pytest.raises(
        CharRNNError,
        match="but data.sha256 is " + SHA + r" \(a different or tampered file; nothing was cached",
    ):
        locate_corpus(None, str(cache), f"{server}/tampered.txt", SHA)
    assert list(cache.iterdir()) == []


def test_corrupted_cached_copy_is_downloaded_again(server, tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "text.txt").write_bytes(b"not the real thing")
    path = locate_corpus(None, str(cache), f"{server}/text.txt", SHA)
    assert path.read_bytes() == BODY and _Handler.hits == 1
