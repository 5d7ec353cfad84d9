"""d2lite.download.fetch: search order, IDX validation, download through a loopback server, real data."""

import functools
import gzip
import hashlib
import http.server
import importlib.util
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from d2lite.download import fetch
from d2lite.errors import D2LiteError

REAL_DEBIAN_DIR = fetch.DEBIAN_DIR  # captured before the autouse fixture hides it
REPO = Path(__file__).resolve().parents[1]
IMAGES, LABELS = fetch.FILES["train"]


def idx(array, ndim=None) -> bytes:
    """The raw (uncompressed) IDX encoding of a uint8 array."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim if ndim is None else ndim])
    return header + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def write_gz(path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def make_dataset(directory, n_train=20, n_test=10, seed=0) -> dict:
    """Writes the four files with random contents; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_gz(Path(directory) / fetch.FILES[split][0], idx(images))
        write_gz(Path(directory) / fetch.FILES[split][1], idx(labels))
        arrays[split] = (images, labels)
    return arrays


def checksums_of(directory) -> dict:
    return {
        name: ((directory / name).stat().st_size, hashlib.sha256((directory / name).read_bytes()).hexdigest())
        for name in fetch.ALL_FILES
    }


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    """No test sees the real environment, cache or Debian folder unless it asks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("D2LITE_DATA", raising=False)
    monkeypatch.delenv("D2LITE_DATA_URL", raising=False)
    monkeypatch.setattr(fetch, "DEBIAN_DIR", tmp_path / "debian")
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/"www" on 127.0.0.1; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_read_idx_round_trips(tmp_path):
    arrays = make_dataset(tmp_path)
    images = fetch.read_idx(tmp_path / IMAGES, (None, 28, 28))
    labels = fetch.read_idx(tmp_path / LABELS, (None,))
    assert images.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(images, arrays["train"][0])
    np.testing.assert_array_equal(labels, arrays["train"][1])
    for split in ("train", "test"):
        for got, want in zip(fetch.read_split(tmp_path, split), arrays[split], strict=True):
            np.testing.assert_array_equal(got, want)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    assert fetch.user_cache("fashion-mnist") == tmp_path / "xdg" / "d2lite" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.user_cache("fashion-mnist") == tmp_path / "home/.cache/d2lite/fashion-mnist"


def test_search_order_and_source(monkeypatch, tmp_path):
    explicit, env, cache, debian = (
        tmp_path / "explicit",
        tmp_path / "env",
        fetch.user_cache("fashion-mnist"),
        fetch.DEBIAN_DIR,
    )
    for directory in (explicit, env, cache, debian):
        make_dataset(directory)
    monkeypatch.setenv("D2LITE_DATA", str(env))
    assert fetch.fetch(explicit) == (explicit, f"found in {explicit} (data_dir)")
    assert fetch.fetch() == (env, f"found in $D2LITE_DATA={env}")
    monkeypatch.setenv("D2LITE_DATA", str(tmp_path / "typo"))
    assert fetch.fetch() == (
        cache,
        f"found in {cache} (user cache); $D2LITE_DATA={tmp_path / 'typo'} holds no copy",
    )
    monkeypatch.delenv("D2LITE_DATA")
    assert fetch.fetch() == (cache, f"found in {cache} (user cache)")
    (cache / LABELS).unlink()  # an incomplete folder is skipped
    directory, source = fetch.fetch()
    assert directory == debian and source.endswith("(Debian package dataset-fashion-mnist)")
    loaded = fetch.load(explicit)
    assert loaded["train"][0].shape == (20, 28, 28) and loaded["test"][1].shape == (10,)
    assert loaded["source"] == f"found in {explicit} (data_dir)"


@pytest.mark.parametrize("keep", [0.5, 0])
def test_truncated_gzip(tmp_path, keep):
    path = write_gz(tmp_path / IMAGES, idx(np.arange(20 * 28 * 28).reshape(20, 28, 28)))
    path.write_bytes(path.read_bytes()[: int(keep * path.stat().st_size)])
    with pytest.raises(D2LiteError, match=r"is truncated or corrupted .*delete it so it is fetch"):
        fetch.read_idx(path, (None, 28, 28))


@pytest.mark.parametrize("damage", ["garbage", "flipped"])
def test_corrupted_gzip(tmp_path, damage):
    path = write_gz(tmp_path / IMAGES, idx(np.arange(20 * 28 * 28).reshape(20, 28, 28)))
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = np.random.default_rng(0).bytes(len(data))
    else:  # inside the deflate stream: caught by zlib or by the CRC
        data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(D2LiteError, match=rf"{path} is truncated or corrupted .*delete it"):
        fetch.read_idx(path, (None, 28, 28))


def test_unreadable_file(tmp_path):
    with pytest.raises(D2LiteError, match=r"cannot read .*set D2LITE_DATA"):
        fetch.read_idx(tmp_path / IMAGES, (None, 28, 28))


def test_labels_where_images_expected(tmp_path):
    write_gz(tmp_path / IMAGES, idx(np.zeros(20)))
    with pytest.raises(D2LiteError, match=r"magic 0x00000801 means 1-D, expected 3-D images"):
        fetch.read_split(tmp_path, "train")


def test_not_uint8(tmp_path):
    path = write_gz(tmp_path / IMAGES, b"\x00\x00\x0d\x03" + idx(np.zeros((1, 28, 28)))[4:])
    with pytest.raises(D2LiteError, match=r"IDX type 0x0d is not uint8"):
        fetch.read_idx(path, (None, 28, 28))


def test_wrong_dims(tmp_path):
    path = write_gz(tmp_path / IMAGES, idx(np.zeros((20, 27, 28))))
    with pytest.raises(D2LiteError, match=r"shape is 20 x 27 x 28, expected N x 28 x 28"):
        fetch.read_idx(path, (None, 28, 28))


@pytest.mark.parametrize(("tail", "problem"), [(b"\x00" * 3, "3 extra"), (None, "28 missing")])
def test_extra_or_missing_bytes(tmp_path, tail, problem):
    raw = idx(np.zeros((20, 28, 28)))
    path = write_gz(tmp_path / IMAGES, raw + tail if tail else raw[:-28])
    with pytest.raises(D2LiteError, match=rf"{problem} bytes after the header"):
        fetch.read_idx(path, (None, 28, 28))


def test_image_label_count_mismatch(tmp_path):
    make_dataset(tmp_path)
    write_gz(tmp_path / LABELS, idx(np.zeros(19)))
    with pytest.raises(D2LiteError, match=r"20 train images but 19 labels"):
        fetch.read_split(tmp_path, "train")


def test_labels_out_of_range(tmp_path):
    make_dataset(tmp_path)
    write_gz(tmp_path / LABELS, idx(np.full(20, 10)))
    with pytest.raises(D2LiteError, match=r"has label 10, expected 0\.\.9"):
        fetch.read_split(tmp_path, "train")
    with pytest.raises(D2LiteError, match=r"unknown split 'val'"):
        fetch.read_split(tmp_path, "val")


def test_download_lands_in_cache(server, monkeypatch):
    url, root = server
    arrays = make_dataset(root)
    monkeypatch.setenv("D2LITE_DATA_URL", url)
    cache = fetch.user_cache("fashion-mnist")
    directory, source = fetch.fetch(checksums=checksums_of(root))
    assert (directory, source) == (cache, f"downloaded from {url} to {cache}")
    assert sorted(p.name for p in cache.iterdir()) == sorted(fetch.ALL_FILES)  # no leftovers
    loaded = fetch.load()
    assert loaded["source"] == f"found in {cache} (user cache)"
    np.testing.assert_array_equal(loaded["test"][0], arrays["test"][0])


def test_download_into_data_dir(server, tmp_path):
    url, root = server
    make_dataset(root)
    target = tmp_path / "mine"
    directory, source = fetch.fetch(target, base_url=url, checksums=checksums_of(root))
    assert directory == target and source.startswith("downloaded from")
    assert not fetch.user_cache("fashion-mnist").exists()


def test_checksums_match_the_ones_tensorflow_datasets_ships():
    """fetch's (size, sha256) of the official files are tfds's, read from the file tfds ships
    (found, not imported: importing tfds takes seconds)."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    assert spec is not None, "tensorflow-datasets (the dev extra) ships the reference checksums"
    listed = Path(spec.origin).parent / "url_checksums" / "fashion_mnist.txt"
    shipped = {}
    for line in listed.read_text().splitlines():
        url, size, sha256, name = line.split("\t")
        assert url == fetch.OFFICIAL_URL + name
        shipped[name] = (int(size), sha256)
    assert shipped == fetch.OFFICIAL_CHECKSUMS


def test_bad_checksum_leaves_nothing(server):
    url, root = server
    make_dataset(root)
    checksums = checksums_of(root)
    size, sha = checksums["t10k-images-idx3-ubyte.gz"]
    checksums["t10k-images-idx3-ubyte.gz"] = (size, "0" * 64)
    with pytest.raises(
        D2LiteError,
        match=r"t10k-images-idx3-ubyte.gz downloaded from "
        rf"{url}t10k-images-idx3-ubyte.gz does not match its checksum",
    ):
        fetch.fetch(base_url=url, checksums=checksums)
    assert list(fetch.user_cache("fashion-mnist").rglob("*")) == []  # no file, no *.tmp.* folder


@pytest.mark.parametrize("change", [-1, 1])
def test_a_file_of_the_wrong_size_leaves_nothing(server, change):
    """A file whose length is not the expected size is refused (from its Content-Length, else
    while streaming) and leaves nothing behind."""
    url, root = server
    make_dataset(root)
    checksums = checksums_of(root)
    size, sha = checksums[LABELS]
    checksums[LABELS] = (size + change, sha)
    with pytest.raises(D2LiteError, match=rf"{LABELS} downloaded from {url}{LABELS} does not match"):
        fetch.fetch(base_url=url, checksums=checksums)
    assert list(fetch.user_cache("fashion-mnist").rglob("*")) == []


def test_http_error(server):
    url, root = server
    make_dataset(root)
    checksums = checksums_of(root)
    (root / LABELS).unlink()
    with pytest.raises(D2LiteError, match=r"labels-idx1-ubyte.gz failed \(HTTP 404: wrong URL\?\)"):
        fetch.fetch(base_url=url, checksums=checksums)
    assert list(fetch.user_cache("fashion-mnist").rglob("*")) == []


def test_server_down_fails_fast():
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(
        D2LiteError,
        match=r"failed \(.*; no network\?\); pass --data-dir \(data_dir=\) or set "
        r"D2LITE_DATA.*apt-get install dataset-fashion-mnist.*make data",
    ):
        fetch.fetch(base_url=f"http://127.0.0.1:{port}/")
    assert time.monotonic() - start < 5


def test_an_explicit_data_dir_without_the_files_is_an_error_not_another_copy(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    empty = tmp_path / "empty"
    assert all((REAL_DEBIAN_DIR / name).is_file() for name in fetch.ALL_FILES)  # another copy exists
    with pytest.raises(
        D2LiteError,
        match=f"data_dir {empty} does not hold the four Fashion-MNIST files"
        r" and they could not be downloaded there: downloading .* failed .*; copy the four "
        rf"Fashion-MNIST .gz files into {empty} .*or leave out --data-dir",
    ) as error:
        fetch.fetch(empty, base_url=f"http://127.0.0.1:{port}/")
    assert "\n" not in str(error.value) and "D2LITE_DATA" not in str(error.value)
    assert not empty.exists()  # the failed download took back the folder it made


def test_official_checksums_are_tensorflow_datasets_own():
    """OFFICIAL_CHECKSUMS copies tfds's url_checksums/fashion_mnist.txt, which tfds itself checks
    its downloads against: read that file (its text only, importing nothing of tfds)."""
    spec = importlib.util.find_spec("tensorflow_datasets")  # finds the package, runs none of it
    assert spec is not None and spec.submodule_search_locations, "tensorflow-datasets is a dependency"
    (package,) = spec.submodule_search_locations
    lines = (Path(package) / "url_checksums" / "fashion_mnist.txt").read_text().splitlines()
    theirs = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            url, size, sha256, name = line.split("\t")
            theirs[url] = (int(size), sha256, name)
    base = fetch.OFFICIAL_URL.rstrip("/") + "/"  # as the download joins them
    ours = {base + name: (*fetch.OFFICIAL_CHECKSUMS[name], name) for name in fetch.ALL_FILES}
    assert sorted(fetch.OFFICIAL_CHECKSUMS) == sorted(fetch.ALL_FILES)
    assert ours == theirs


def test_real_debian_data():
    train_X, train_y = fetch.read_split(REAL_DEBIAN_DIR, "train")
    test_X, test_y = fetch.read_split(REAL_DEBIAN_DIR, "test")
    assert train_X.shape == (60000, 28, 28) and train_y.shape == (60000,)
    assert test_X.shape == (10000, 28, 28) and test_y.shape == (10000,)
    assert {a.dtype for a in (train_X, train_y, test_X, test_y)} == {np.dtype(np.uint8)}
    assert set(np.unique(test_y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [6000] * 10)


def test_cli_reports_one_line(tmp_path):
    make_dataset(tmp_path / "bad")
    (tmp_path / "bad" / IMAGES).write_bytes(b"not gzip at all")
    result = subprocess.run(
        [sys.executable, "-m", "d2lite.download.fetch", "--data-dir", str(tmp_path / "bad")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "truncated or corrupted" in lines[0] and IMAGES in lines[0]
