"""Write files whole or not at all: write to a temporary name in the same folder, then rename."""
import json
import os
import shutil
import tempfile
from typing import Any


def _temp_beside(path: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the renamed file gets a normal file's mode
    return tmp


def atomic_write_json(obj: Any, path: str) -> None:
    tmp = _temp_beside(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4, sort_keys=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_copy(src: str, dst: str) -> None:
    tmp = _temp_beside(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
