"""Atomic writes that keep the user's umask: the one place carclf replaces a file or folder.

A file is written to a temporary name beside its target and renamed over it, so a reader (or a
run killed mid-write) sees the old file or the new one, never half of one. ``tempfile`` creates
its files 0600 and its folders 0700; a bundle, report or checkpoint is meant to be read by other
users (a container serving it as another user), so the temporary gets the mode a plain ``open``
would have given it under the current umask before it is renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new folder under the current umask."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The caller writes the temporary file by any means (``np.savez``, ``torch.save``, ONNX's
    ``save``...). ``suffix`` is the temporary's extension (default ``.tmp``): give the one a
    writer insists on (``np.savez`` appends ``.npz`` to any other name). On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new folder inside ``parent`` with the umask's mode (``mkdtemp`` makes it 0700)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Put the finished folder ``tmp`` in place of ``folder`` (an older one is removed).

    Two renames: a reader sees the old folder or the new one; a crash between them leaves the
    old one beside as ``.<name>.old`` and the new one complete.
    """
    tmp, folder = Path(tmp), Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
