"""Local images for the command line: arguments expanded lazily into Sources, read within limits.

A folder of 100 000 photos is walked one directory at a time and each file is read
only when the pipeline loads it (in the fetch pool), so memory stays flat.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import stat
from collections.abc import Iterator

from .errors import FileUnreadable, ItemError, TooLarge
from .source import Source

# What directories and globs yield unless --match says otherwise.
IMAGE_FILES = r"(?i)\.(jpe?g|png|gif|webp|bmp|tiff?)$"
GLOB_MAGIC = re.compile(r"[*?[]")


def sources(arg: str, recursive: bool, match: re.Pattern[str], max_bytes: int) -> Iterator[Source]:
    """One argument's Sources: a file as given; a directory's files (all levels when
    `recursive`; hidden ones skipped) or a glob's matches, kept where `match` finds
    their path. An argument that yields nothing is one failing Source, never silence."""
    if os.path.isdir(arg):
        found = _walk(arg, recursive, match, max_bytes)
    elif GLOB_MAGIC.search(arg) and not os.path.lexists(arg):
        found = (_file(path, max_bytes) for path in glob.iglob(arg, recursive=True)
                 if match.search(path) and not os.path.isdir(path))
    else:
        found = iter([_file(arg, max_bytes)])
    first = next(found, None)
    if first is None:
        yield _failing(arg, FileUnreadable(f"no files here match '{match.pattern}'"))
        return
    yield first
    yield from found


def read(path: str, max_bytes: int) -> bytes:
    """A regular file's bytes, refused by its size before reading it if over `max_bytes`."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise FileUnreadable("not a regular file")
        if info.st_size > max_bytes:
            raise TooLarge(f"file is {info.st_size} bytes, the limit is {max_bytes}")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FileUnreadable(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew since stat
        raise TooLarge(f"file is larger than the limit of {max_bytes} bytes")
    return data


def _walk(top: str, recursive: bool, match: re.Pattern[str], max_bytes: int) -> Iterator[Source]:
    """Files in name order, one directory listing in memory at a time."""
    errors: list[OSError] = []  # directories os.walk could not list, reported in place
    for root, dirs, names in os.walk(top, onerror=errors.append):
        yield from _listing_errors(errors)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.startswith(".") and match.search(path):
                yield _file(path, max_bytes)
    yield from _listing_errors(errors)


def _listing_errors(errors: list[OSError]) -> Iterator[Source]:
    while errors:
        error = errors.pop(0)
        yield _failing(error.filename, FileUnreadable(f"cannot list directory: {error.strerror or error}"))


def _file(path: str, max_bytes: int) -> Source:
    return Source(path, functools.partial(read, path, max_bytes))


def _failing(name: str, error: ItemError) -> Source:
    return Source(name, functools.partial(_raise, error))


def _raise(error: ItemError) -> bytes:
    raise error
