"""Write files whole or not at all: write to a temporary name in the same folder, then rename."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file beside ``path`` to write; renamed to ``path`` when the block succeeds, removed otherwise.

    ``suffix`` keeps the extension for writers that choose the format by name (``.png``, ``.json``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the renamed file gets a normal file's mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=4, sort_keys=False)


def atomic_copy(src: str, dst: str) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def pid_alive(pid: int) -> bool:
    """Whether a process exists, for telling a killed writer's leftovers from a live writer's."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True
