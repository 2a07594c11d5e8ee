"""Zipped datasets: unpack once into a cache folder, then read like a folder.

The competition download is a zip holding train.csv, sample-submission.csv, train.zip and
test.zip; users should not have to unpack it by hand. Extraction is keyed by the zip's name, size
and mtime, written to a temporary folder and renamed into place, so an interrupted unpack is never
mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

from carclf.errors import DataError
from carclf.io import make_temp_dir, replace_dir


def cache_root() -> Path:
    return Path(os.environ.get("CARCLF_CACHE", Path.home() / ".cache" / "carclf"))


def _safe_extract(zf: zipfile.ZipFile, dest: Path) -> None:
    dest = dest.resolve()
    for member in zf.infolist():
        target = (dest / member.filename).resolve()
        if dest != target and dest not in target.parents:
            raise DataError(
                f"{zf.filename}: member {member.filename!r} would extract outside the folder"
            )
    zf.extractall(dest)


def _extract_nested(folder: Path) -> None:
    """Unpack zips found inside (train.zip, test.zip) next to themselves, then drop them."""
    for inner in sorted(folder.rglob("*.zip")):
        try:
            with zipfile.ZipFile(inner) as zf:
                _safe_extract(zf, inner.parent)
        except zipfile.BadZipFile as e:
            raise DataError(f"{inner.name} inside the archive: not a valid zip ({e})") from None
        inner.unlink()


def unpack(zip_path: str | os.PathLike) -> Path:
    """Return a folder holding the zip's contents (nested zips unpacked), unpacking at most once."""
    zip_path = Path(zip_path)
    st = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :12
    ]
    dest = cache_root() / "unpacked" / f"{zip_path.stem}-{key}"
    if dest.is_dir():
        return dest
    tmp = make_temp_dir(dest.parent, ".partial-")
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                _safe_extract(zf, tmp)
        except zipfile.BadZipFile as e:
            raise DataError(f"{zip_path}: not a valid zip file ({e})") from None
        _extract_nested(tmp)
        for junk in tmp.rglob("__MACOSX"):
            shutil.rmtree(junk, ignore_errors=True)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def data_root(folder: Path) -> Path:
    """Descend through a lone top-level folder (zips often wrap everything in one)."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and not _looks_like_class_dir(entries[0]):
            folder = entries[0]
        else:
            return folder


def _looks_like_class_dir(p: Path) -> bool:
    # A lone folder full of images is a class folder (or a flat test set), not a wrapper.
    return any(f.is_file() for f in p.iterdir())
