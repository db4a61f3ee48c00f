"""The captions file: an append-only JSON-lines dataset that users build image indexes from.

It is treated like one:

- **one writer at a time**: a run holds an exclusive kernel lock on ``<file>.lock`` for its
  whole life (released by the kernel when the process ends, however it ends, so a killed run
  leaves no stale lock); a second run fails at once, naming the holder;
- **no record lost to a torn line**: before appending, a last line without its newline (a hard
  kill or a full disk mid-write) is ended if it is a whole record, dropped if it is a fragment;
- **one line per record to every reader** (see :func:`json_line`);
- **paths that travel**: ``image_path`` is relative to the file's folder when the image is
  under it, absolute otherwise, and URIs (``s3://``, ``https://``) are kept as given; readers
  resolve it against the file's folder (and, for files of earlier versions, the working
  directory).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from llamavision.errors import LlamaVisionError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_LINE_BREAKS = ("\u2028", "\u2029", "\x85")


class OutputInUseError(LlamaVisionError):
    """Another run is writing the same captions file: wait for it, or write elsewhere."""


def is_uri(path: str) -> bool:
    """Return whether ``path`` is a URI (``s3://``, ``gs://``, ``https://``...), not a file."""
    return bool(_URI.match(path))


def stored_path(image: str | os.PathLike[str], out: str | os.PathLike[str]) -> str:
    """Return ``image_path`` as a record of the captions file ``out`` stores it.

    Relative to ``out``'s folder (with ``/``) when the image is under it, absolute otherwise;
    a URI as given.
    """
    text = os.fspath(image)
    if is_uri(text):
        return text
    absolute = Path(os.path.abspath(text))
    try:
        return absolute.relative_to(Path(os.path.abspath(out)).parent).as_posix()
    except ValueError:
        return str(absolute)


def resolve_image_path(stored: str, out: str | os.PathLike[str]) -> str | None:
    """Return where the image of a record is: a URI, or an existing file; ``None`` if neither.

    A relative path is looked up against the captions file's folder, then (files written by
    earlier versions stored paths relative to the run's working directory) against the
    working directory.
    """
    if is_uri(stored):
        return stored
    path = Path(stored)
    candidates = [path] if path.is_absolute() else [Path(os.path.abspath(out)).parent / path, path]
    for candidate in candidates:
        if candidate.is_file():
            return str(Path(os.path.abspath(candidate)))
    return None


def json_line(record: dict[str, Any]) -> str:
    """Return a record as one line of JSON to every reader.

    U+2028, U+2029 and U+0085 are escaped (``str.splitlines`` and some JSON-lines readers
    break lines there), and so are lone surrogates, which is how Python holds the bytes of a
    file name that is not UTF-8: ``json.loads`` and ``os.fsencode`` give the name back.
    """
    text = json.dumps(record, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
    for char in _LINE_BREAKS:
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text + "\n"


def iter_captions(out: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a captions JSONL file, one line at a time.

    A missing file yields nothing; a torn line (a hard kill mid-write) is skipped, and its
    image is simply captioned again.
    """
    for _, record in iter_captions_at(out):
        yield record


def iter_captions_at(out: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(offset, record)`` for each record of a captions file (see :func:`read_at`)."""
    path = Path(out)
    if not path.exists():
        return
    with path.open("rb") as lines:
        offset = 0
        for line in lines:
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line.decode("utf-8", "replace"))
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield start, record


def read_at(out: str | os.PathLike[str], offset: int) -> dict[str, Any]:
    """Read the record that starts at byte ``offset`` of a captions file."""
    with Path(out).open("rb") as f:
        f.seek(offset)
        record: dict[str, Any] = json.loads(f.readline().decode("utf-8", "replace"))
        return record


def repair_tail(path: Path) -> None:
    """End a last line that has no newline: kept if it is a whole record, dropped if torn."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start = end
        while start > 0:  # back to the last newline, a block at a time
            block = max(0, start - 65536)
            f.seek(block)
            found = f.read(start - block).rfind(b"\n")
            if found >= 0:
                start = block + found + 1
                break
            start = block
        f.seek(start)
        try:
            whole = isinstance(json.loads(f.read()), dict)
        except ValueError:
            whole = False
        if whole:
            f.seek(end)
            f.write(b"\n")
        else:
            f.truncate(start)


class CaptionsWriter:
    """Appends records to a captions file, holding it for one run (a context manager).

    Entering takes the file's lock (see the module's notes) and repairs a torn last line;
    :meth:`write` appends one record and flushes it, so nothing finished is lost.

    Raises:
        OutputInUseError: on entering, when another run holds the file.

    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None
        self._sink: IO[bytes] | None = None

    def __enter__(self) -> CaptionsWriter:
        self._lock_fd = _take_lock(self.lock_path, self.path)
        try:
            self.path.touch()
            repair_tail(self.path)
            self._sink = self.path.open("ab")
        except BaseException:
            self.close()
            raise
        return self

    def write(self, record: dict[str, Any]) -> int:
        """Append one record and flush it; return the byte offset where it starts."""
        assert self._sink is not None, "use CaptionsWriter as a context manager"
        offset = self._sink.tell()
        self._sink.write(json_line(record).encode("utf-8"))
        self._sink.flush()
        return offset

    def close(self) -> None:
        """Close the file and release the lock."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the kernel lock
            self._lock_fd = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _take_lock(lock_path: Path, out: Path) -> int:
    """Lock byte 0 of ``lock_path`` for this process, and write who holds it after it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd)
    except OSError:
        os.lseek(fd, 1, os.SEEK_SET)
        holder = os.read(fd, 200).decode("utf-8", "replace").strip()
        os.close(fd)
        raise OutputInUseError(
            f"{out} is being written by another run ({holder or 'another process'}). Two runs "
            "on one captions file would caption and pay for every image twice: wait for that "
            "run to finish (this one then resumes where it stopped), or pass another --out."
        ) from None
    os.ftruncate(fd, 1)
    os.lseek(fd, 1, os.SEEK_SET)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    return fd


if sys.platform == "win32":  # pragma: no cover - locks one byte, released with the handle
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(
            fd, fcntl.LOCK_EX | fcntl.LOCK_NB
        )  # per open file: two writers in one process conflict too
