"""Find, download, verify and read the four Fashion-MNIST IDX files, with NumPy only.

Search order: an explicit `data_dir`, `$D2LITE_DATA`, the user cache, then Debian's package
dataset-fashion-mnist. Only when none holds all four files do we download (into the first
writable choice of the same list) with the standard library's urllib, each file checked against
its size and sha256 before it enters the folder.

    python -m d2lite.download.fetch [--data-dir DIR]
"""

import argparse
import contextlib
import gzip
import hashlib
import http.client
import math
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ..devices.compile_cache import user_cache
from ..errors import D2LiteError, first_line

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# (size, sha256) of the official .gz files, as in tfds's url_checksums/fashion_mnist.txt.
OFFICIAL_CHECKSUMS: dict[str, tuple[int, str]] = {
    "t10k-images-idx3-ubyte.gz": (
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    "t10k-labels-idx1-ubyte.gz": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    "train-images-idx3-ubyte.gz": (
        26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    "train-labels-idx1-ubyte.gz": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ALL_FILES = FILES["train"] + FILES["test"]
TIMEOUT_S = 10  # seconds without an answer (to connect, or for the next bytes) before giving up
CHUNK_BYTES = 1 << 20
HOW_TO_GET_DATA = (
    "pass --data-dir (data_dir=) or set D2LITE_DATA to a folder holding the four Fashion-MNIST .gz "
    "files, or on Debian/Ubuntu `apt-get install dataset-fashion-mnist`, or run `make data`"
)


def how_to_get_data(data_dir=None):
    """What to do when the files are missing: with an explicit folder, only that folder counts."""
    if data_dir is None:
        return HOW_TO_GET_DATA
    return (
        f"copy the four Fashion-MNIST .gz files into {data_dir} (Debian/Ubuntu's dataset-fashion-mnist "
        f"has them in {DEBIAN_DIR}), or leave out --data-dir (data_dir=) to use the usual search"
    )


def _candidates(data_dir=None) -> list[tuple[Path, str]]:
    """The search path, each folder with the words that tell the user where the data came from.

    An explicit `data_dir` is the only place: a run told where its data is never trains on
    another copy.
    """
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir")]
    found = []
    if os.environ.get("D2LITE_DATA"):
        found.append((Path(os.environ["D2LITE_DATA"]).expanduser(), "$D2LITE_DATA"))
    found.append((user_cache("fashion-mnist"), "user cache"))
    found.append((DEBIAN_DIR, "Debian package dataset-fashion-mnist"))
    return found


def _fix_for(path: Path) -> str:
    # Files from the Debian package are not ours to delete; everything else is re-downloadable.
    if Path(path).parent == DEBIAN_DIR:
        return "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
    return "delete it so it is fetched again"


def read_idx(path, expected_shape: tuple) -> np.ndarray:
    """A gzipped IDX file as a uint8 array; `None` in `expected_shape` accepts any size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise D2LiteError(f"cannot read {path} ({e.strerror or e}); {HOW_TO_GET_DATA}") from e
    try:
        if not raw:  # what an interrupted copy leaves; gzip itself would accept it as empty
            raise EOFError("empty file")
        data = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise D2LiteError(f"{path} is truncated or corrupted ({e}); {_fix_for(path)}") from e

    what = {1: "labels", 3: "images"}.get(len(expected_shape), "data")

    def refuse(problem):
        return D2LiteError(f"{path} is not a Fashion-MNIST {what} file: {problem}; {_fix_for(path)}")

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise refuse("no IDX magic number at its start")
    if data[2] != 0x08:
        raise refuse(f"IDX type 0x{data[2]:02x} is not uint8 (0x08)")
    ndim, magic = data[3], int.from_bytes(data[:4], "big")
    if ndim != len(expected_shape):
        raise refuse(f"magic 0x{magic:08x} means {ndim}-D, expected {len(expected_shape)}-D {what}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise refuse("its header is cut short")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(want is not None and got != want for got, want in zip(shape, expected_shape, strict=True)):
        wanted = " x ".join("N" if want is None else str(want) for want in expected_shape)
        raise refuse(f"its shape is {' x '.join(map(str, shape))}, expected {wanted}")
    # An exact byte count catches both a short write and two files glued together.
    body, promised = len(data) - header, math.prod(shape)
    if body != promised:
        problem = "extra" if body > promised else "missing"
        raise refuse(
            f"{abs(body - promised)} {problem} bytes after the header (shape {shape} needs {promised})"
        )
    # A copy, because a view of the immutable bytes would be read-only for the caller.
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def read_split(directory, split) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of `split` ("train" or "test"), both uint8."""
    if split not in FILES:
        raise D2LiteError(f"unknown split {split!r}; use one of {sorted(FILES)}")
    images_path, labels_path = (Path(directory) / name for name in FILES[split])
    images, labels = read_idx(images_path, (None, 28, 28)), read_idx(labels_path, (None,))
    if len(images) != len(labels):
        raise D2LiteError(
            f"{directory}: {len(images)} {split} images but {len(labels)} labels; "
            "the two files come from different sources, delete both to fetch again"
        )
    if labels.size and labels.max() > 9:
        raise D2LiteError(f"{labels_path} has label {labels.max()}, expected 0..9; {_fix_for(labels_path)}")
    return images, labels


def _download_one(url: str, path: Path, size: int, sha256: str) -> None:
    """Streams `url` into `path`, checking its size and sha256 on the way."""
    name = path.name
    mismatch = D2LiteError(
        f"{name} downloaded from {url} does not match its checksum (a wrong or tampered mirror?); "
        "try again later"
    )

    def network_error(e):
        reason = getattr(e, "reason", None) or first_line(e)
        return D2LiteError(f"downloading {url} failed ({reason}; no network?)")

    try:
        # The timeout bounds the connection and each read, so a dead server fails in seconds.
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        raise D2LiteError(f"downloading {url} failed (HTTP {e.code}: wrong URL?)") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timed out, reset
        raise network_error(e) from e
    digest, received = hashlib.sha256(), 0
    with response, open(path, "wb") as out:
        promised = response.headers.get("Content-Length")
        if promised is not None and promised.isdigit() and int(promised) != size:
            raise mismatch
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:  # cut off mid-file
                raise network_error(e) from e
            if not chunk:
                break
            received += len(chunk)
            if received > size:  # never more than the expected size on disk
                raise mismatch
            digest.update(chunk)
            out.write(chunk)
    if received != size or digest.hexdigest() != sha256:
        raise mismatch


def _download(dest: Path, base_url: str, checksums: dict) -> None:
    """Downloads all four files, moving them into `dest` only once every one is verified."""
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download.tmp.", dir=dest))
    except OSError as e:
        raise D2LiteError(f"cannot write to {dest} ({e.strerror or e})") from e
    try:
        # Each file is written into `tmp`, which goes away below whatever happens: a file that
        # fails its check, or is cut off, never reaches `dest`.
        for name in ALL_FILES:
            size, sha256 = checksums[name]
            try:
                _download_one(base_url.rstrip("/") + "/" + name, tmp / name, size, sha256)
            except OSError as e:  # writing into tmp: the network's errors are D2LiteErrors by now
                raise D2LiteError(f"cannot write to {dest} ({e.strerror or e})") from e
        for name in ALL_FILES:
            os.replace(tmp / name, dest / name)  # same file system, so atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # a failed download leaves no empty folder behind; a full one stays
            with contextlib.suppress(OSError):
                dest.rmdir()


def fetch(data_dir=None, *, base_url=None, checksums=None) -> tuple[Path, str]:
    """(folder holding the four files, one line saying where they came from)."""
    candidates = _candidates(data_dir)
    for directory, label in candidates:
        if all((directory / name).is_file() for name in ALL_FILES):
            where = f"{label}={directory}" if label.startswith("$") else f"{directory} ({label})"
            first, first_label = candidates[0]
            if first_label == "$D2LITE_DATA" and directory != first:  # a typo, or files not copied yet
                where += f"; $D2LITE_DATA={first} holds no copy"
            return directory, f"found in {where}"
    # The first candidate is data_dir, else $D2LITE_DATA, else the cache: never Debian's.
    dest = candidates[0][0]
    base_url = base_url or os.environ.get("D2LITE_DATA_URL") or OFFICIAL_URL
    try:
        _download(dest, base_url, OFFICIAL_CHECKSUMS if checksums is None else checksums)
    except D2LiteError as error:
        hint = how_to_get_data(data_dir and dest)
        if data_dir is None:
            raise D2LiteError(f"{error}; {hint}") from error
        raise D2LiteError(
            f"data_dir {dest} does not hold the four Fashion-MNIST files and they could not "
            f"be downloaded there: {error}; {hint}"
        ) from error
    return dest, f"downloaded from {base_url} to {dest}"


def load(data_dir=None, **fetch_kwargs) -> dict:
    """{"train": (X, y), "test": (X, y), "source": where the files came from}."""
    directory, source = fetch(data_dir, **fetch_kwargs)
    return {split: read_split(directory, split) for split in FILES} | {"source": source}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser("python -m d2lite.download.fetch", description=__doc__.split(".")[0])
    parser.add_argument(
        "--data-dir",
        help="the only folder to look in (and to download into); without it: $D2LITE_DATA, "
        "then the user cache, then Debian's package",
    )
    args = parser.parse_args(argv)
    try:
        data = load(args.data_dir)
    except D2LiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(data["source"])
    for split in FILES:
        images, labels = data[split]
        print(f"{split}: images {images.shape} {images.dtype}, labels {labels.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
