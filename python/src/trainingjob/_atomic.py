"""Writing one file so that its final name only ever holds all of it.

A SIGKILL, an OOM kill or a node loss can stop a save at any byte; rename(2)
within one filesystem is atomic, so the bytes go to ``<name>.tmp`` first
(docs/checkpoint-contract.md, "Making a save atomic"). The launcher deletes
a ``.tmp`` left by a dead writer before the next attempt, and never takes one
for a checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import IO, Any, Callable

TMP_SUFFIX = ".tmp"

# Filesystems that cannot lock (some FUSE and NFS mounts) say so with these;
# the write then goes ahead unfenced, as the launcher's own lock does.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}

#: How often a writer reopens a temporary that another writer renamed away
#: between our open and our lock; each time means a whole save finished.
_REOPEN_TRIES = 3


def fsync_dir(path: str) -> None:
    """A rename is durable only once its directory is fsynced."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(f: IO[bytes], tmp: str) -> None:
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileExistsError(
            errno.EEXIST, "another process is writing this checkpoint now", tmp
        ) from None
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise


def _still_named(f: IO[bytes], tmp: str) -> bool:
    # Whoever held the lock before us may have renamed this very file to its
    # final name: truncating it then would tear a finished checkpoint.
    try:
        st = os.stat(tmp)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _open_temporary(tmp: str) -> IO[bytes]:
    """Opens ``tmp`` locked and empty. A temporary left by a dead writer is
    reused (no one holds its lock); one a live writer holds is refused, so
    two processes saving the same step never write into one file."""
    for _ in range(_REOPEN_TRIES):
        f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644), "wb")
        try:
            _lock(f, tmp)
            if _still_named(f, tmp):
                f.truncate(0)
                return f
        except BaseException:
            f.close()
            raise
        f.close()
    raise FileExistsError(errno.EEXIST, "other processes keep saving this checkpoint", tmp)


def _fill(f: IO[bytes], write: Callable[[IO[bytes]], Any]) -> int:
    write(f)
    f.flush()
    # Without it the rename can reach the disk before the data, and a node
    # crash leaves a complete-looking name over zeros.
    os.fsync(f.fileno())
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        # The launcher skips an empty file as a torn save
        # (launcher/src/checkpoint.rs, `check`): better to say so now.
        raise ValueError("the writer wrote nothing; an empty checkpoint is never complete")
    return size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> int:
    """Writes the file ``path`` by calling ``write(f)`` with a binary file
    open on ``path + ".tmp"``, then fsyncs it, renames it to ``path`` and
    fsyncs the directory. Returns its size in bytes.

    If ``write`` raises (or the process is interrupted), the temporary is
    removed and the exception propagates: ``path`` is either the old file,
    absent, or the whole new one, never a part."""
    tmp = path + TMP_SUFFIX
    with _open_temporary(tmp) as f:
        try:
            size = _fill(f, write)
            # Renamed while still locked, so no other writer can take the
            # temporary over between our last byte and the rename.
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    fsync_dir(os.path.dirname(path))
    return size
