"""Where the archive is written: one interface, a local-disk and an S3 implementation.

Keys are relative POSIX paths (``cases/CF-1/case.pdf``). Every write is atomic: a reader
sees the whole object under its key or nothing, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from worker.errors import NotFound, StorageError

TMP_DIR = ".tmp"
HASH_CHUNK = 1024 * 1024


class Writer(Protocol):
    def write(self, data: bytes | memoryview, /) -> object:
        """Take ``data`` (a view into a buffer the caller reuses: copy what is kept)."""


class Staged(Writer, Protocol):
    """An object written (durably, for a local disk) but not yet under its key.

    :meth:`Storage.stage` hands one out; once its block has exited cleanly, ``commit`` puts
    it in place and ``discard`` drops it. Whoever stages an object commits or discards it.
    """

    key: str

    def commit(self, sync_folder: bool = True) -> None:
        """Put the object under its key. With ``sync_folder`` off it is in place but durable
        only once :meth:`Storage.sync_folders` has run for it."""

    def discard(self) -> None: ...


def commit_or_discard(staged: Staged) -> None:
    """Put a staged object in place (its folder synced); if that fails, drop it."""
    try:
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def check_key(key: str) -> str:
    """Refuse any key that could name something outside the archive root."""
    path = PurePosixPath(key)
    if (
        not key
        or path.is_absolute()
        or "\\" in key
        or "\x00" in key
        or any(part in {"", ".", ".."} for part in key.split("/"))
    ):
        raise StorageError(f"unsafe storage key {key!r}", key)
    return key


class Storage(ABC):
    @contextlib.contextmanager
    def open_writer(self, key: str) -> Iterator[Writer]:
        """Stream an object; it appears under ``key``, durably, only if the block exits
        cleanly."""
        with self.stage(key) as staged:
            yield staged
        commit_or_discard(staged)

    @abstractmethod
    def stage(
        self, key: str, cache: bool = True, owner: str | None = None
    ) -> contextlib.AbstractContextManager[Staged]:
        """Stream an object to put under ``key`` later (see :class:`Staged`); discarded if
        the block raises. A writer of many files commits them together and syncs each
        folder once.

        ``owner`` names the heartbeat that says the writer is alive (a download's: its file,
        see :meth:`remove_stale_temp`). A temporary object with a live owner is never taken
        for a dead writer's, however long it takes.

        ``cache=False`` is for objects nobody here reads again (downloaded files): a local
        disk drops their pages from the page cache once they are durable, instead of
        filling it at download speed. That cache would push out every other process's (and
        count against a container's memory limit); dropping it also hands the next download
        pages already in use, instead of fresh ones.
        """

    @abstractmethod
    def sync_folders(self, keys: Iterable[str]) -> None:
        """Make the objects under ``keys``, committed with ``sync_folder`` off, durable."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, sync_folder: bool = True) -> None:
        """Put ``data`` under ``key``, whole. With ``sync_folder`` off it is in place but
        durable only once its folder is synced: by the next write to the same folder with
        ``sync_folder`` on, which then makes both durable together. Renames in a case folder
        (a handful of names, one directory block) reach the disk in the order they were
        made, so the later object is never durable without the earlier one."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is none."""

    @abstractmethod
    def open_reader(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys below ``prefix`` (a folder-like prefix ending in ``/``), in no set order."""

    @abstractmethod
    def describe(self) -> str:
        """Where the archive is, for people (a path or an s3:// URL)."""

    def move(self, source: str, destination: str) -> None:
        self.write_bytes(destination, self.read_bytes(source))
        self.delete(source)

    def remove_stale_temp(
        self, older_than_seconds: float, live_owners: Collection[str] = frozenset()
    ) -> int:
        """Delete what writers killed mid-write left behind; return how many were removed.

        A writer's object is kept while its owner is in ``live_owners`` (its heartbeat goes
        on), whatever its age; one with no live owner is removed once it is older than
        ``older_than_seconds`` (an object written in one go, or its writer died)."""
        return 0

    def digest(self, key: str) -> tuple[str, int]:
        """The sha256 (hex) and size of the object's bytes as stored; NotFound if none."""
        sha = hashlib.sha256()
        size = 0
        with self.open_reader(key) as reader:
            while chunk := reader.read(HASH_CHUNK):
                sha.update(chunk)
                size += len(chunk)
        return sha.hexdigest(), size


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / TMP_DIR

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    @contextlib.contextmanager
    def stage(self, key: str, cache: bool = True, owner: str | None = None) -> Iterator[Staged]:
        final = self.path(key)
        fd, tmp_name = self._temp_file(owner)
        staged = _LocalStaged(key, final, tmp_name, os.fdopen(fd, "wb"))
        try:
            with staged.handle:
                yield staged
                staged.handle.flush()
                os.fsync(fd)
                if not cache:
                    # Clean pages (fsync wrote them) are dropped at once; the bytes are on disk.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except BaseException:
            staged.discard()
            raise

    def _temp_file(self, owner: str | None) -> tuple[int, str]:
        """A new file of our own (mode 0600, like mkstemp's) in the temporary folder, named
        ``<owner tag>.<random>.part`` (see :func:`owner_tag`), or ``<random>.part``."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        tag = f"{owner_tag(owner)}." if owner is not None else ""
        while True:
            name = os.path.join(self.tmp, f"{tag}{secrets.token_hex(8)}.part")
            try:
                return os.open(name, flags, 0o600), name
            except FileNotFoundError:
                self.tmp.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                continue

    def sync_folders(self, keys: Iterable[str]) -> None:
        # A rename is durable once its folder is fsynced: one fsync per folder covers them all.
        for folder in {self.path(key).parent for key in keys}:
            _fsync_dir(folder)

    def write_bytes(self, key: str, data: bytes, sync_folder: bool = True) -> None:
        with self.stage(key) as staged:
            staged.write(data)
        try:
            staged.commit(sync_folder)
        except BaseException:
            staged.discard()
            raise

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"no object {key}", key) from exc

    @contextlib.contextmanager
    def open_reader(self, key: str) -> Iterator[BinaryIO]:
        try:
            handle = self.path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"no object {key}", key) from exc
        with handle:
            yield handle

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def move(self, source: str, destination: str) -> None:
        target = self.path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.path(source), target)
        except FileNotFoundError as exc:
            raise NotFound(f"no object {source}", source) from exc
        _fsync_dir(target.parent)

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root.joinpath(*[p for p in prefix.split("/") if p])
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                yield f"{rel}/{name}" if rel != "." else name

    def describe(self) -> str:
        return str(self.root)

    def remove_stale_temp(
        self, older_than_seconds: float, live_owners: Collection[str] = frozenset()
    ) -> int:
        # Not by the file's age alone: a live download's file may not change for a long
        # while (a slow host, bytes still buffered). Its owner's heartbeat says it is alive.
        if not self.tmp.is_dir():
            return 0
        live = {owner_tag(owner) for owner in live_owners}
        ceiling = time.time() - older_than_seconds
        removed = 0
        for part in self.tmp.glob("*.part"):
            tag, dot, _rest = part.name.partition(".")
            if dot and _rest != "part" and tag in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < ceiling:
                    part.unlink()
                    removed += 1
        return removed


class _LocalStaged:
    """A temporary file, fsynced, waiting to be renamed to its final name."""

    def __init__(self, key: str, final: Path, tmp_name: str, handle: BinaryIO) -> None:
        self.key = key
        self.final = final
        self.tmp_name = tmp_name
        self.handle = handle

    def write(self, data: bytes | memoryview, /) -> int:
        return self.handle.write(data)

    def commit(self, sync_folder: bool = True) -> None:
        try:
            os.replace(self.tmp_name, self.final)
        except FileNotFoundError:
            # Folders are made when first needed, not checked before every file.
            self.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_name, self.final)
        if sync_folder:
            _fsync_dir(self.final.parent)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_name)


def owner_tag(owner: str) -> str:
    """A short fixed-length name for an owner (a storage key may be longer than a file name
    may be)."""
    return hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
