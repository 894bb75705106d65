"""Write credentials to disk so that a reader never sees half a file or a readable key.

Keys are created with mode 0600 from the first byte (not chmod-ed afterwards,
which would leave a window where another user can open them), and every file
is written beside its final name and renamed over it: ``rename(2)`` is atomic on
POSIX, so a proxy reloading ``cert.pem`` gets the old file or the new one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshlet.errors import IdentityError

__all__ = ["KEY_MODE", "PUBLIC_MODE", "check_key_mode", "write_atomic"]

KEY_MODE = 0o600  # owner read/write only (ARCHITECTURE.md: key files are 0600)
PUBLIC_MODE = 0o644  # certificates and bundles are public


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file having ``mode`` from creation."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have cleared bits we asked for
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_key_mode(path: Path) -> None:
    """Refuse a key file that group or others can read, as ssh does."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path}: key file is missing") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path}: key file is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "run chmod 600 on it"
        )
