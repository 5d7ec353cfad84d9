"""One writer per run directory."""

import fcntl
import os
import socket
from pathlib import Path

from ..errors import D2LiteError

LOCK = ".lock"


def lock(run_dir):
    """Hold `run_dir`'s lock; return its file descriptor, whose closing releases it.

    A second process that opens the run directory while it is in use gets an error naming the
    owner (pid and host, which the lock file holds). The lock is the kernel's (`flock`), so a
    process killed outright releases it, and `--resume` after a crash just works. The processes
    of a multi-host run share their run directory: the first one holds the lock for all.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise D2LiteError(
            f"{run_dir} is in use by {owner}: let that run finish or stop it (Ctrl-C), or use another "
            "run directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd
