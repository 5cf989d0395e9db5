"""The download path against the local test server: verify and cache, reuse the cache, and every
way a download fails, through the real config (nothing is cached then)."""

import hashlib
from pathlib import Path

import pytest
from conftest import SERVED, TINY, train_config

from charrnn.corpus import locate_corpus
from charrnn.errors import CharRNNError
from charrnn.run.train import train

SHA = hashlib.sha256(SERVED).hexdigest()


def test_download_verifies_caches_and_then_skips_the_network(server, tmp_path: Path):
    url = f"{server.url}/corpus.txt"
    (path,) = locate_corpus(None, str(tmp_path / "cache"), url, SHA, timeout=5)
    assert path == tmp_path / "cache" / "corpus.txt" and path.read_bytes() == SERVED
    assert server.hits["/corpus.txt"] == 1
    assert locate_corpus(None, str(tmp_path / "cache"), url, SHA, timeout=5) == [path]
    assert server.hits["/corpus.txt"] == 1  # the verified cached copy is used, no second request
    assert [p.name for p in path.parent.iterdir()] == ["corpus.txt"]  # no temp files left


def test_corrupted_cached_copy_is_downloaded_again(server, tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "corpus.txt").write_bytes(b"not the real thing")
    (path,) = locate_corpus(None, str(cache), f"{server.url}/corpus.txt", SHA, timeout=5)
    assert path.read_bytes() == SERVED and server.hits["/corpus.txt"] == 1


def test_unverified_url_needs_explicit_null_and_warns(server, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        (path,) = locate_corpus(None, str(tmp_path), f"{server.url}/corpus.txt", None, timeout=5)
    assert "without verifying" in caplog.text
    assert path.read_bytes() == SERVED and path.name.endswith("-corpus.txt")  # keyed by URL
    # a verified download of the same name never takes the unverified file for its own
    assert not (tmp_path / "corpus.txt").exists()


@pytest.mark.parametrize(
    "name, extra, pattern",
    [
        ("gone.txt", (), r"could not download .*/gone.txt: HTTP 404.*save it as .*gone.txt"),
        ("slow.txt", ("data.download_timeout=1",), "no answer within data.download_timeout=1"),
        (
            "wrong.txt",
            (),
            "but data.sha256 is " + SHA + r" \(a different or tampered file; nothing was cached",
        ),
        ("truncated.txt", (), "stopped after 500 of 3000 bytes"),
    ],
)
def test_a_failed_download_is_one_line_and_caches_nothing(server, tmp_path, name, extra, pattern):
    cache = tmp_path / "cache"
    cfg = train_config(
        tmp_path / "run",
        *TINY,
        "data.path=null",
        f"data.cache_dir={cache}",
        f"data.url={server.url}/{name}",
        f"data.sha256={SHA}",
        *extra,
    )
    with pytest.raises(CharRNNError, match=pattern) as err:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    if name == "gone.txt":
        assert "data.path" in str(err.value)  # how to supply the file by hand
    assert not cache.exists() or list(cache.iterdir()) == []
