"""Snapshots on disk: atomic, checksummed, locked across processes, verified on load.

A saved memory is a folder holding ``snapshot-<hex>`` folders and a ``CURRENT`` file naming the
live one (``NOTHING_YET`` while the first save is under way: a snapshot that ``CURRENT`` never
named was never committed, and one with no ``CURRENT`` at all lost it, and is kept). ``write_snapshot``
writes a new snapshot, then swaps ``CURRENT`` atomically;
``reading`` holds a shared lock while a loader reads; the ``check_*`` and ``read_*`` helpers
refuse a corrupt part with an error that names the file. Both backends save through here (the
Milvus backend writes a manifest only).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

from saememory.messages import compact

try:
    import fcntl
except ImportError:  # Windows: no cross-process locks (see _locked)
    fcntl = None

FORMAT_VERSION = 3  # 2 added "files", the sha256 of every data file; 3 stores FaissBackend's arrays compactly
READABLE_VERSIONS = (1, 2, 3)  # format 1 loads without checksums
CURRENT = "CURRENT"
NOTHING_YET = "none"  # CURRENT during a folder's first save: nothing committed (a kill then leaves no save)
LOCK = "LOCK"
LOCK_TIMEOUT = 60.0  # seconds a save or load waits for another process's save or load
_SNAPSHOT_NAME = re.compile(r"snapshot-[0-9a-f]{12}")  # as write_snapshot names them
_CURRENT_TEMPORARY = re.compile(r"\.CURRENT\.[0-9a-f]{12}\.tmp")  # as replace_file names CURRENT's new version
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _count(low: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and value >= low


def _of(*kinds: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kinds)


def _milvus(value: Any) -> bool:
    keys = ("uri", "collection", "index")
    return value is None or (isinstance(value, dict) and all(isinstance(value.get(key), str) for key in keys))


def _files(value: Any) -> bool:
    return isinstance(value, dict) and all(
        name != "manifest.json" and _FILE_NAME.fullmatch(name) and isinstance(digest, str) and _SHA256.fullmatch(digest)
        for name, digest in value.items()
    )


# (key, check, rule, required): what SAEMemory.load and the backends read from a manifest.
_MANIFEST_FIELDS = (
    ("dim", _count(1), "an integer >= 1", True),
    ("d_sae", _count(0), "an integer >= 0", True),
    ("n_messages", _count(0), "an integer >= 0", True),
    ("index_type", _of(str, type(None)), "a FAISS index_factory string, or null (Milvus)", True),
    ("encoder", _of(dict), "an object", True),
    ("settings", _of(dict), "an object", True),
    ("encoder_config", _of(dict, type(None)), "an object or null", False),
    ("milvus", _milvus, "null or an object naming a uri, collection and index as strings", False),
    ("backend", lambda value: value in ("faiss", "milvus"), "'faiss' or 'milvus'", False),  # older saves: inferred
)
_FILES_FIELD = ("files", _files, "an object of plain file names and lowercase hex sha256s", True)  # format 2 on
def _unicode(value: Any) -> bool:
    """A str that is valid Unicode: JSON may spell a lone surrogate ("\\ud800"), which no save could write."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utc_time(value: Any) -> bool:
    """None, or a time as ``saememory.times.iso`` writes it (fixed width, UTC): filters compare them as text."""
    if value is None:
        return True
    if not isinstance(value, str) or not _STORED_TIME.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_STORED_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")
# (field, check, rule): what every stored record holds, as add would have accepted it.
_RECORD_FIELDS = tuple((key, lambda value: _unicode(value) and value != "", "a non-empty string of valid Unicode")
                       for key in ("id", "role", "session_id", "user_id")) + (
    ("content", _unicode, "a string of valid Unicode"),
    ("timestamp", lambda value: value is None or _unicode(value), "a string of valid Unicode or null"),
    ("metadata", _of(dict), "an object"),
)
_OPTIONAL_RECORD_FIELDS = (("time", _utc_time, "a UTC time as saememory writes it, or null"),)  # saves before times


class SaveConflictError(RuntimeError):
    """A save would replace a snapshot that another writer made after this memory read the folder."""


def write_snapshot(
    path: str | Path, manifest: dict[str, Any], write_files: Callable[[Path], None] | None = None,
    expect: str | None = None,
) -> str:
    """Writes a new snapshot folder, then atomically points ``CURRENT`` at it; other snapshots go.

    Runs under the folder's exclusive lock (see ``_locked``), so savers take turns and the
    cleanup only ever removes superseded snapshots and killed savers' ``.tmp-`` folders. Every
    file and folder is fsynced before the ``CURRENT`` swap: a crash or kill at any moment leaves
    the previous save (or the new one) loadable.

    Args:
        path: The memory's folder.
        manifest: Written as ``manifest.json`` with ``format_version`` and ``files`` (the sha256
            of every data file) added.
        write_files: Called with the temporary snapshot folder to write the data files into
            (flat files only). Defaults to None (a manifest only).
        expect: The snapshot the caller last read or wrote in this folder, or ``""`` if it never
            read or wrote it. If ``CURRENT`` names another, another writer saved since (or the
            folder holds a memory the caller never loaded), and replacing that save would lose
            its messages or undo its changes. Defaults to None: replace whatever is there.

    Returns:
        The new snapshot's name, to ``expect`` at the next save.

    Raises:
        SaveConflictError: If ``CURRENT`` names another snapshot than ``expect``.
        TimeoutError: If another process holds the folder's lock for over ``LOCK_TIMEOUT`` seconds.
        ValueError: If ``CURRENT`` or ``LOCK`` is a symbolic link (a save never writes through one).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path, exclusive=True):
        current = path / CURRENT
        if current.is_symlink():
            raise ValueError(f"{current} is a symbolic link; a saved memory's CURRENT is a plain file. Remove the "
                             "link (and check who made it) before saving here.")
        found = current.read_bytes().decode("ascii", errors="replace").strip() if current.is_file() else None
        lost = _lost_snapshot(path) if not found else None  # CURRENT deleted or emptied: its save is still here
        if expect is not None and lost is not None and lost != expect:  # not this memory's own last save
            raise SaveConflictError(
                f"{path} holds the saved memory {lost} but {'an empty ' if found == '' else 'no '}{CURRENT} file to "
                f"name it (it was lost or emptied); saving would delete it. To keep it, write {lost} into "
                f"{path / CURRENT} and load it (SAEMemory.load); to replace it, pass save(path, overwrite=True).")
        if not found and lost is None:  # a first save: should it be killed, no snapshot looks lost
            replace_file(current, lambda out: out.write(NOTHING_YET.encode()), durable=True)
            found = NOTHING_YET
        if expect is not None and found != NOTHING_YET and found and found != expect:
            raise SaveConflictError(
                f"{path} already holds a saved memory ({found}) that this memory did not load; saving would replace "
                "it and lose its messages. Load it (SAEMemory.load) and add to that, save to another folder, or "
                "pass save(path, overwrite=True) to replace it." if not expect else
                f"{path} was saved by another writer after this memory read it (it held {expect}, it now holds "
                f"{found}). Saving would undo that writer's changes: messages it deleted would come back and "
                "messages it added would be lost. Load the folder again (SAEMemory.load) and repeat your changes, "
                "or pass save(path, overwrite=True) to replace it.")
        snapshot = f"snapshot-{uuid.uuid4().hex[:12]}"
        tmp = path / f".tmp-{snapshot}"
        tmp.mkdir()
        try:
            if write_files is not None:
                write_files(tmp)
            files = {file.name: _sync_and_hash(file) for file in sorted(tmp.iterdir())}
            full = {**manifest, "format_version": FORMAT_VERSION, "files": files}
            _write_durably(tmp / "manifest.json", json.dumps(full, indent=2).encode())
            _fsync_dir(tmp)
            os.replace(tmp, path / snapshot)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(path)  # the snapshot's name is on disk before CURRENT can name it
        replace_file(current, lambda out: out.write(snapshot.encode()), durable=True)  # the commit point
        _fsync_dir(path)
        # Under the exclusive lock no reader or saver is on any other snapshot: all are garbage.
        for old in path.iterdir():
            name = old.name[len(".tmp-"):] if old.name.startswith(".tmp-") else old.name
            if old.name != snapshot and _SNAPSHOT_NAME.fullmatch(name) and old.is_dir():  # never a folder of the user's
                shutil.rmtree(old, ignore_errors=True)
            elif _CURRENT_TEMPORARY.fullmatch(old.name) and not old.is_symlink() and old.is_file():
                old.unlink(missing_ok=True)  # a killed saver's CURRENT, never renamed (CURRENT is written under this lock)
    return snapshot


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Finds the live snapshot of a saved memory and reads and checks its manifest.

    The snapshot is only guaranteed to stay on disk while the lock is held: to read its data
    files too, use ``reading``.

    Raises:
        FileNotFoundError: If ``path`` holds no saved memory.
        ValueError: If ``CURRENT`` or the manifest is corrupt, or of another format version.
        TimeoutError: If another process holds the folder's lock for over ``LOCK_TIMEOUT`` seconds.
    """
    with reading(path) as found:
        return found


@contextmanager
def reading(path: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Holds a shared lock on a saved memory while the block reads its live snapshot.

    Yields:
        ``(snapshot, manifest)``: the live snapshot's folder and its checked manifest.

    Raises:
        FileNotFoundError, ValueError, TimeoutError: As ``read_manifest``.
    """
    path = Path(path)
    if not (path / CURRENT).is_file():  # checked before locking: loading never creates a LOCK file
        lost = _lost_snapshot(path) if path.is_dir() else None
        if lost is None:
            raise _no_save(path)
        if not (path / CURRENT).is_file():  # again: a first save may have committed meanwhile
            # Not "nothing saved": an app that then creates a new memory would save over it.
            raise corrupt(path, CURRENT, f"is missing, but the folder holds the snapshot {lost} (write {lost} into "
                          f"{CURRENT} to load it)")
    with _locked(path, exclusive=False):
        yield _live_snapshot(path)


def verify_files(path: str | Path, snapshot: Path, manifest: dict[str, Any]) -> None:
    """Checks a snapshot's data files against the sha256 of each in its manifest.

    Format 1 saves predate checksums and are not checked here (their content still is).

    Raises:
        ValueError: Naming the first file that is unlisted, missing or changed.
    """
    if manifest["format_version"] < 2:
        return
    listed = manifest["files"]
    for file in sorted(snapshot.iterdir()):
        if file.name != "manifest.json" and not file.name.startswith(".") and file.name not in listed:
            raise corrupt(path, file.name, f"is in {snapshot.name} but not in its manifest (it came from elsewhere: "
                          "remove it)")
    for name, digest in sorted(listed.items()):
        if not (snapshot / name).is_file():
            raise corrupt(path, name, f"is listed in the manifest but missing from {snapshot.name}")
        if _sync_and_hash(snapshot / name, sync=False) != digest:
            raise corrupt(path, name, "does not match its checksum in the manifest (it was changed or swapped in "
                          "from another save)")


def corrupt(path: str | Path, name: str, problem: str) -> ValueError:
    """The error for one bad part of a saved memory: ``Saved memory at X is corrupt: <name> <problem>. <fix>``"""
    return ValueError(f"Saved memory at {path} is corrupt: {name} {problem}. Restore the folder from a backup, "
                      "or save the memory again from a process that still holds it.")


def read_part(path: str | Path, name: str, read: Callable[[], Any]) -> Any:
    """``read()``, with whatever numpy, scipy, FAISS or json raise turned into ``corrupt`` naming ``name``."""
    try:
        return read()
    except ImportError:
        raise  # a missing optional package is not a corrupt file
    except Exception as err:
        raise corrupt(path, name, f"cannot be read ({type(err).__name__}: {err})") from None


def check_dense(path: str | Path, name: str, array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Returns ``array`` if it is finite float32 of ``shape``; raises ``corrupt`` otherwise."""
    if array.shape != shape:
        raise corrupt(path, name, f"has shape {array.shape}, but the manifest says {shape}")
    if array.dtype != np.float32:
        raise corrupt(path, name, f"holds {array.dtype} values; saememory saves float32")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        raise corrupt(path, name, f"holds NaN or infinite values (first in row {int(bad[0][0])})")
    return array


def check_sparse(path: str | Path, name: str, matrix: sp.spmatrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """Returns ``matrix`` if it is a valid, finite float32 CSR matrix of ``shape``; raises ``corrupt`` otherwise."""
    if matrix.format != "csr" or matrix.dtype != np.float32:
        raise corrupt(path, name, f"holds a {matrix.dtype} {matrix.format} matrix; saememory saves float32 csr")
    if matrix.shape != shape:
        raise corrupt(path, name, f"has shape {matrix.shape}, but the manifest says {shape}")
    try:
        matrix.check_format(full_check=True)  # indices within the width, indptr ascending and complete
    except ValueError as err:
        raise corrupt(path, name, f"is not a valid CSR matrix ({err})") from None
    if not np.isfinite(matrix.data).all():
        raise corrupt(path, name, "holds NaN or infinite values")
    return matrix


def read_array(path: str | Path, folder: Path, name: str) -> np.ndarray:
    """The array in ``folder/name`` (a ``.npy`` file, read without pickle); raises ``corrupt`` if unreadable."""
    array = read_part(path, name, lambda: np.load(folder / name, allow_pickle=False))
    if not isinstance(array, np.ndarray):
        raise corrupt(path, name, f"holds a {type(array).__name__}, not one array")
    return array


def _check_array(path: str | Path, name: str, array: np.ndarray, shape: tuple[int, ...], dtype: Any) -> None:
    if array.shape != shape:
        raise corrupt(path, name, f"has shape {array.shape}, but the manifest says {shape}")
    if array.dtype != dtype:
        raise corrupt(path, name, f"holds {array.dtype} values; saememory saves {np.dtype(dtype)}")


def _check_scale(path: str | Path, name: str, scale: np.ndarray, n: int) -> None:
    _check_array(path, name, scale, (n,), np.float32)
    bad = np.flatnonzero(~np.isfinite(scale) | (scale < 0))
    if bad.size:
        raise corrupt(path, name, f"holds NaN, infinite or negative scales (first in row {int(bad[0])})")


def check_int8_rows(path: str | Path, names: tuple[str, str], values: np.ndarray, scale: np.ndarray,
                    shape: tuple[int, int]) -> None:
    """Checks a save's dense vectors as ``saememory.arrays.Int8Rows`` holds them; raises ``corrupt`` otherwise.

    ``names``: the files of the int8 values (``shape``) and of the row scales (finite, >= 0, float32).
    """
    _check_array(path, names[0], values, shape, np.int8)
    _check_scale(path, names[1], scale, shape[0])


def check_int8_csr(path: str | Path, names: tuple[str, str, str, str], parts: tuple[np.ndarray, ...],
                   shape: tuple[int, int], index_dtype: Any) -> None:
    """Checks a save's SAE codes as ``saememory.arrays.Int8CSR`` holds them; raises ``corrupt`` otherwise.

    ``names`` and ``parts``: row pointers (int64, ``n + 1``, from 0, ascending), feature indices
    (``index_dtype``, ascending within each row, below the width), int8 values (one per index)
    and row scales (float32, finite, >= 0).
    """
    indptr, indices, values, scale = parts
    n, width = shape
    _check_array(path, names[0], indptr, (n + 1,), np.int64)
    if indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise corrupt(path, names[0], "does not start at 0 and ascend: it is no CSR row pointer")
    nnz = int(indptr[-1])
    _check_array(path, names[1], indices, (nnz,), index_dtype)
    if nnz and (int(indices.max()) >= width or int(indices.min()) < 0):
        raise corrupt(path, names[1], f"holds feature indices outside 0..{width - 1} (manifest: d_sae={width})")
    step = np.diff(indices.astype(np.int64))
    starts = indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < nnz)] - 1  # steps that cross into a new row
    ascending = step > 0
    ascending[starts] = True
    if not ascending.all():
        raise corrupt(path, names[1], "holds a row whose feature indices are not ascending and unique")
    _check_array(path, names[2], values, (nnz,), np.int8)
    _check_scale(path, names[3], scale, n)


def read_records(path: str | Path, file: Path, n: int) -> list[dict[str, Any]]:
    """Reads a ``records.jsonl``: ``n`` lines, each a valid record, no (user_id, id) pair twice.

    Raises:
        ValueError: Naming the file, the line and the problem.
    """
    try:
        lines = file.read_bytes().decode("utf-8").split("\n")  # only "\n": contents may hold U+2028 and the like
    except (OSError, UnicodeDecodeError) as err:
        raise corrupt(path, file.name, f"cannot be read ({err})") from None
    if lines[-1] == "":
        lines.pop()  # the last line's newline
    records, seen = [], set()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)  # NaN too: saves of format 1 wrote metadata as given, and must still load
        except (json.JSONDecodeError, RecursionError) as err:
            raise corrupt(path, file.name, f"line {number} is not JSON ({err})") from None
        problem = _record_problem(record) or _metadata_problem(record["metadata"] if isinstance(record, dict)
                                                               and isinstance(record.get("metadata"), dict) else {})
        if problem:
            raise corrupt(path, file.name, f"line {number} {problem}")
        key = (record["user_id"], record["id"])
        if key in seen:
            raise corrupt(path, file.name, f"line {number} repeats message id {key[1]!r} of user {key[0]!r} "
                          "(a duplicated line)")
        seen.add(key)
        records.append(compact(record))
    if len(records) != n:
        raise corrupt(path, file.name, f"has {len(records)} records, but the manifest says n_messages={n}")
    return records


def _live_snapshot(path: Path) -> tuple[Path, dict[str, Any]]:
    """Reads ``CURRENT`` and the manifest it names; the caller holds the lock."""
    try:
        raw = (path / CURRENT).read_bytes()
    except FileNotFoundError:
        raise _no_save(path) from None
    name = raw.decode("ascii", errors="replace").strip()
    if name == NOTHING_YET:  # a first save under way, or killed before it was committed
        raise _no_save(path)
    if not _SNAPSHOT_NAME.fullmatch(name):
        raise corrupt(path, CURRENT, f"must hold the name of a snapshot folder (snapshot-<hex>) but holds "
                      f"{raw[:40]!r} (if a snapshot-* folder is there, write its name into {CURRENT})")
    snapshot = path / name
    if not snapshot.is_dir():
        raise corrupt(path, CURRENT, f"names {name}, which is not a folder there")
    where = f"{name}/manifest.json"
    try:
        manifest = json.loads((snapshot / "manifest.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise corrupt(path, where, f"cannot be read ({err})") from None
    if not isinstance(manifest, dict):
        raise corrupt(path, where, f"holds a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ValueError(f"Saved memory at {path} has format_version {_short(version)}; this saememory reads "
                         f"versions {', '.join(map(str, READABLE_VERSIONS))}. Load it with the saememory that "
                         "saved it.")
    for key, check, rule, required in _MANIFEST_FIELDS + (_FILES_FIELD,) * (version >= 2):
        if key not in manifest:
            if required:
                raise corrupt(path, where, f"lacks the key {key!r} ({rule})")
        elif not check(manifest[key]):
            raise corrupt(path, where, f"has {key}={_short(manifest[key])}, but it must be {rule}")
    return snapshot, manifest


def _metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Metadata a save could have written: valid Unicode keys and strings all the way down."""
    stack = [metadata]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if not all(_unicode(key) for key in value):
                return "has metadata with a key that is not valid Unicode"
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not _unicode(value):
            return "has metadata with a string that is not valid Unicode"
    return None


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    for key, check, rule in _RECORD_FIELDS + _OPTIONAL_RECORD_FIELDS:
        if key not in record:
            if (key, check, rule) in _OPTIONAL_RECORD_FIELDS:
                continue
            return f"lacks the field {key!r}"
        if not check(record[key]):
            return f"has {key}={_short(record[key])}, but it must be {rule}"
    return None


def _lost_snapshot(path: Path) -> str | None:
    """The name of a snapshot folder in ``path`` (the newest, if several), or None: a save whose
    ``CURRENT`` is missing or empty is still a save, not an empty folder."""
    found = [p for p in path.iterdir() if _SNAPSHOT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return max(found, key=lambda p: p.stat().st_mtime).name if found else None


def _no_save(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{path} holds no saved memory (no {CURRENT} file naming one); save one with "
                             "memory.save(path).")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Locking ---------------------------------------------------------------------------------------
#
# Savers of one folder hold an exclusive flock on <folder>/LOCK from their first write to their
# last deletion; readers hold a shared one while they read. So savers take turns, a snapshot is
# only deleted when no process can be reading it, and a leftover .tmp- folder is a killed saver's
# (the kernel drops a dead process's locks). We chose reader locks over keeping old snapshots
# for a while and retrying vanished reads: no guess at how long a read may take can be right
# (a retrying reader still fails when two saves pass during one slow load), one snapshot stays
# on disk, and a load waits at most for the save in progress. Without fcntl (Windows), or on a
# file system without locks, nothing is locked: saves stay atomic, crash-safe and checksummed,
# but only one process may use a folder at a time.


@contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    """Holds the folder's lock, waiting at most ``LOCK_TIMEOUT`` seconds for other processes."""
    if fcntl is None:
        yield
        return
    lock = folder / LOCK
    try:
        fd = os.open(lock, (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{lock} is a symbolic link; a saved memory's LOCK is a plain file. Remove the link "
                             "(and check who made it) before using this folder.") from None
        if exclusive or err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield  # a read-only folder with no LOCK file: no saver of this version has written there
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Could not {'save to' if exclusive else 'load'} {folder}: another process has held its lock "
                        f"({lock}) for over {LOCK_TIMEOUT:g} s while saving or loading it. Retry when it is done "
                        f"(find it with `fuser {lock}`)."
                    ) from None
                time.sleep(0.01)
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise
                break  # a file system without locks (some FUSE mounts): as without fcntl
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync_and_hash(file: Path, sync: bool = True) -> str:
    """The file's sha256, after flushing it to disk (``sync``)."""
    digest = hashlib.sha256()
    with open(file, "r+b" if sync else "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def replace_file(target: Path, write: Callable[[BinaryIO], Any], durable: bool = False) -> None:
    """Writes ``target`` whole or not at all: ``write`` fills a temporary file beside it, which then
    replaces it atomically, so readers never see half a file.

    The temporary file has a fresh random name (``O_EXCL | O_NOFOLLOW``: a link planted at a fixed
    name would be written through, and writers in several processes each get their own) and the
    permissions of any new file (``0o666`` less the umask, where ``mkstemp`` would give 0600). With
    ``durable``, it is fsynced before the swap. On any failure it is removed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            handle = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_durably(file: Path, data: bytes) -> None:
    with open(file, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Flushes a directory's entries to disk where the platform allows it (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
