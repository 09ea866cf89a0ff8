"""Saving and loading a FaissBackend folder: across processes and kills, and against corrupt files.

Small synthetic memories (benchmarks/reliability_persistence.py's ``state``) written through
``FaissBackend`` directly: no encoder is needed, and the child processes never import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from saememory.backends import snapshot as backend
from saememory.backends.faiss import FaissBackend
from tests.helpers import ROOT, load_script, save_float32_format

bench = load_script(ROOT / "benchmarks" / "reliability_persistence.py")
MANIFEST = {"encoder": {}, "settings": {}}


def save(path: Path, token: int = 1) -> Path:
    """Saves the memory of ``token`` to ``path``; returns its snapshot folder."""
    records, dense, sparse = bench.state(token)
    index = bench.new_index()
    index.add(records, dense, sparse)
    index.save(path, {**MANIFEST, "token": token}, overwrite=True)  # a new memory in place of the last
    return snapshot_of(path)


def snapshot_of(path: Path) -> Path:
    return path / (path / "CURRENT").read_text()


def edit_manifest(snapshot: Path, edit) -> None:
    manifest = json.loads((snapshot / "manifest.json").read_text())
    edit(manifest)
    (snapshot / "manifest.json").write_text(json.dumps(manifest))


def rehash(snapshot: Path, name: str) -> None:
    """Records a changed file's new checksum: what a buggy writer (or a save of format 1) gives the content checks."""
    digest = hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
    edit_manifest(snapshot, lambda manifest: manifest["files"].__setitem__(name, digest))


def refused(path: Path, match: str) -> str:
    with pytest.raises(ValueError, match=match) as err:
        FaissBackend.load(path)
    assert f"Saved memory at {path}" in str(err.value)
    return str(err.value)


# Processes and kills ---------------------------------------------------------------------------


@pytest.mark.skipif(backend.fcntl is None, reason="no fcntl (Windows): one process per folder, and no SIGKILL")
def test_concurrent_savers_and_loaders_survive_kills(tmp_path):
    # Before: two savers deleted each other's snapshots and .tmp folders, a loader read a snapshot
    # deleted under it ("is corrupt"), and some rounds ended with no loadable save.
    counts = bench.run(rounds=3, seconds=3, savers=2, loaders=2, seed=0, workdir=tmp_path)
    assert counts.failures == []
    assert counts.saves >= 3 and counts.loads > 0 and counts.kills_mid_save > 0


@pytest.mark.skipif(backend.fcntl is None, reason="no fcntl: folders are not locked")
def test_a_held_lock_makes_save_and_load_wait_then_fail_naming_the_folder(tmp_path, monkeypatch):
    import fcntl

    path = tmp_path / "mem"
    save(path)
    monkeypatch.setattr(backend, "LOCK_TIMEOUT", 0.2)
    fd = os.open(path / backend.LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another saver, for as long as this test likes
        with pytest.raises(TimeoutError, match=f"save to {path}.*held its lock"):
            save(path, token=2)
        with pytest.raises(TimeoutError, match=f"load {path}"):
            FaissBackend.load(path)
        fcntl.flock(fd, fcntl.LOCK_SH)  # a reader: others may read, nobody may save
        assert FaissBackend.load(path)[1]["token"] == 1
        with pytest.raises(TimeoutError):
            save(path, token=2)
    finally:
        os.close(fd)
    save(path, token=2)
    assert FaissBackend.load(path)[1]["token"] == 2


def test_a_failed_save_keeps_the_previous_one_and_removes_its_own_folder(tmp_path):
    path = tmp_path / "mem"
    save(path)
    records, dense, sparse = bench.state(2)
    dense[1, 3] = np.nan  # a direct FaissBackend user can add what SAEMemory would refuse
    index = bench.new_index()
    index.add(records, dense, sparse)
    with pytest.raises(ValueError, match=f"Not saved to {path}: message 'm0' of user 'u1' holds NaN"):
        index.save(path, MANIFEST, overwrite=True)
    assert FaissBackend.load(path)[1]["token"] == 1
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("snapshot-")) == ["CURRENT", "LOCK"]


# Corrupt saves ---------------------------------------------------------------------------------


def test_nan_in_dense_is_refused(tmp_path):
    # Before: it loaded, and the next save made every message unsearchable.
    path = tmp_path / "mem"
    snapshot = save(path)
    scale = np.load(snapshot / "dense_scale.npy")
    scale[2] = np.nan
    np.save(snapshot / "dense_scale.npy", scale)
    refused(path, "corrupt: dense_scale.npy does not match its checksum in the manifest .it was changed or swapped in")
    rehash(snapshot, "dense_scale.npy")
    refused(path, r"corrupt: dense_scale.npy holds NaN, infinite or negative scales \(first in row 2\)")


def test_a_duplicated_records_line_is_refused(tmp_path):
    # Before: it loaded with one message lost and another returned twice.
    path = tmp_path / "mem"
    snapshot = save(path)
    lines = (snapshot / "records.jsonl").read_text().splitlines(keepends=True)
    (snapshot / "records.jsonl").write_text("".join([lines[0], lines[0], *lines[2:]]))
    refused(path, "corrupt: records.jsonl does not match its checksum")
    rehash(snapshot, "records.jsonl")
    refused(path, "corrupt: records.jsonl line 2 repeats message id 'm0' of user 'u0'")



@pytest.mark.parametrize("field, value, problem", [
    ("time", "not a time", "has time='not a time', but it must be a UTC time as saememory writes it"),
    ("time", "2024-13-01T00:00:00.000000+00:00", "has time="),
    ("user_id", "", "has user_id='', but it must be a non-empty string of valid Unicode"),
    ("role", "", "has role='', but it must be a non-empty string"),
    ("id", "a\ud800", "has id='a\\ud800', but it must be a non-empty string of valid Unicode"),
    ("metadata", {"x": ["ok", "\udc80"]}, "has metadata with a string that is not valid Unicode"),
])
def test_a_record_add_would_refuse_is_refused_when_loaded(tmp_path, field, value, problem):
    # Before: they loaded, and a bad time passed every since= filter, an empty user could not be
    # addressed or deleted, and a lone surrogate made the next save fail.
    path = tmp_path / "mem"
    snapshot = save(path)
    lines = (snapshot / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record[field] = value
    (snapshot / "records.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    rehash(snapshot, "records.jsonl")
    refused(path, re.escape(f"corrupt: records.jsonl line 1 {problem}"))


def test_metadata_nan_written_by_old_saves_still_loads(tmp_path):
    # Saves of format 1 wrote metadata as given, NaN included; they must load, and save again.
    path = tmp_path / "mem"
    snapshot = save(path)
    lines = (snapshot / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["metadata"] = {"confidence": float("nan")}
    (snapshot / "records.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    rehash(snapshot, "records.jsonl")
    loaded = FaissBackend.load(path)[0]
    (first,) = loaded.fetch(record["user_id"], [record["id"]])
    assert np.isnan(first[0]["metadata"]["confidence"])

@pytest.mark.parametrize("name", ["dense_values.npy", "dense_scale.npy", "sparse_indices.npy", "sparse_values.npy",
                                  "sparse_scale.npy", "records.jsonl", "bm25_tf.npz"])
def test_a_part_swapped_in_from_another_save_of_the_same_size_is_refused(tmp_path, name):
    # Before: shapes agreed, so it loaded another memory's vectors, codes or records.
    tokens = [t for t in range(100) if len(bench.state(t)[0]) == 30][:2]
    one, other = save(tmp_path / "one", tokens[0]), save(tmp_path / "other", tokens[1])
    shutil.copy(other / name, one / name)
    refused(tmp_path / "one", f"corrupt: {name} does not match its checksum")


def test_content_checks_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / "mem"
    snapshot = save(path)
    indices = np.load(snapshot / "sparse_indices.npy")
    indices[0] = bench.D_SAE + 5
    np.save(snapshot / "sparse_indices.npy", indices)
    rehash(snapshot, "sparse_indices.npy")
    refused(path, f"corrupt: sparse_indices.npy holds feature indices outside 0..{bench.D_SAE - 1}")

    snapshot = save(path)
    lines = (snapshot / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[3])
    record["timestamp"] = 12
    (snapshot / "records.jsonl").write_text("\n".join([*lines[:3], json.dumps(record), *lines[4:]]) + "\n")
    rehash(snapshot, "records.jsonl")
    refused(path, "corrupt: records.jsonl line 4 has timestamp=12, but it must be a string of valid Unicode or null")
    (snapshot / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    rehash(snapshot, "records.jsonl")
    refused(path, f"records.jsonl has {len(lines) - 1} records, but the manifest says n_messages={len(lines)}")

    snapshot = save(path)
    (snapshot / "notes.txt").write_text("hello")
    refused(path, "corrupt: notes.txt is in snapshot-[0-9a-f]+ but not in its manifest")
    (snapshot / "notes.txt").unlink()
    (snapshot / "bm25_lengths.npy").unlink()
    refused(path, "corrupt: bm25_lengths.npy is listed in the manifest but missing")


@pytest.mark.parametrize("key", ["dim", "n_messages", "index_type", "encoder", "settings", "files"])
def test_a_manifest_missing_a_key_is_refused(tmp_path, key):
    # Before: a bare KeyError here, or later in SAEMemory.load.
    path = tmp_path / "mem"
    snapshot = save(path)
    edit_manifest(snapshot, lambda manifest: manifest.pop(key))
    with pytest.raises(ValueError, match=f"corrupt: snapshot-[0-9a-f]+/manifest.json lacks the key '{key}'"):
        backend.read_manifest(path)


@pytest.mark.parametrize("key,value", [("dim", "8"), ("n_messages", -1), ("settings", None), ("encoder", [1]),
                                       ("files", {"dense.npy": "beef"}), ("milvus", {"uri": 3})])
def test_a_manifest_value_of_the_wrong_type_is_refused(tmp_path, key, value):
    # Before: a bare TypeError or AttributeError, or a wrong load.
    path = tmp_path / "mem"
    snapshot = save(path)
    edit_manifest(snapshot, lambda manifest: manifest.__setitem__(key, value))
    with pytest.raises(ValueError, match=f"corrupt: snapshot-[0-9a-f]+/manifest.json has {key}="):
        backend.read_manifest(path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01binary", b"../../etc", b"", b"snapshot-0123456789ab"])
def test_a_garbage_current_is_refused(tmp_path, content):
    # Before: a bare UnicodeDecodeError, or a path outside the folder.
    path = tmp_path / "mem"
    save(path)
    (path / "CURRENT").write_bytes(content)
    with pytest.raises(ValueError, match="corrupt: CURRENT (must hold the name of a snapshot folder|names snapshot-)"):
        backend.read_manifest(path)
    with pytest.raises(ValueError, match="corrupt: CURRENT"):
        FaissBackend.load(path)


def test_no_save_and_a_non_json_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved memory"):
        FaissBackend.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved memory"):
        backend.read_manifest(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # loading never creates a LOCK file
    snapshot = save(tmp_path / "mem")
    (snapshot / "manifest.json").write_bytes(b"\x80[")
    with pytest.raises(ValueError, match="corrupt: snapshot-[0-9a-f]+/manifest.json cannot be read"):
        backend.read_manifest(tmp_path / "mem")


# What must keep working ------------------------------------------------------------------------


def test_round_trip_keeps_ids_shared_by_two_users_and_odd_line_breaks(tmp_path):
    path = tmp_path / "mem"
    records, dense, sparse = bench.state(3)
    records[0]["content"] = "line\u2028separator, next\x85line, paragraph\u2029end"
    index = bench.new_index()
    index.add(records, dense, sparse)
    index.save(path, MANIFEST)
    loaded, manifest = FaissBackend.load(path)
    assert loaded._records == records and manifest["format_version"] == backend.FORMAT_VERSION
    assert loaded.row_of[("u0", "m0")] == 0 and loaded.row_of[("u1", "m0")] == 1


def test_a_format_1_save_without_checksums_still_loads(tmp_path):
    path = tmp_path / "mem"
    records, dense, sparse = bench.state(1)
    snapshot = save_float32_format(path, records, dense, sparse, {**MANIFEST, "token": 1}, version=1,
                                   dim=bench.DIM, d_sae=bench.D_SAE)  # float32 dense.npy and sparse.npz
    loaded, manifest = FaissBackend.load(path)
    assert manifest["token"] == 1 and bench.mismatch(loaded, 1) is None  # quantised as it loads
    np.save(snapshot / "dense.npy", np.full((len(records), bench.DIM), np.inf, np.float32))
    refused(path, "corrupt: dense.npy holds NaN or infinite values")  # content is still checked
    sp.save_npz(snapshot / "sparse.npz", sp.csr_matrix(sparse, dtype=np.float64))
    np.save(snapshot / "dense.npy", dense)
    refused(path, "corrupt: sparse.npz holds a float64 csr matrix; saememory saves float32 csr")


def test_a_manifest_only_snapshot_as_milvus_writes(tmp_path):
    path = tmp_path / "mem"
    milvus = {"uri": "memory.db", "collection": "c", "index": "FLAT"}
    sizes = {"dim": 8, "d_sae": 16, "index_type": None, "n_messages": 3}
    backend.write_snapshot(path, {**MANIFEST, **sizes, "milvus": milvus})
    snapshot, manifest = backend.read_manifest(path)
    assert manifest["milvus"] == milvus and manifest["files"] == {}
    assert {p.name for p in snapshot.iterdir()} == {"manifest.json"}
    with pytest.raises(ValueError, match="Milvus"):
        FaissBackend.load(path)


def test_a_save_never_undoes_another_writers_save(tmp_path):
    """Two writers load one folder; the second to save would bring back what the first deleted."""
    path = tmp_path / "mem"
    save(path, token=1)
    first, second = FaissBackend.load(path)[0], FaissBackend.load(path)[0]
    records = [r for r in first._records if r is not None]
    first.delete(records[0]["user_id"], [records[0]["id"]])
    first.save(path, {**MANIFEST, "token": 2})
    before = sorted(os.listdir(path))
    with pytest.raises(backend.SaveConflictError, match="another writer.*Load the folder again.*overwrite=True"):
        second.save(path, {**MANIFEST, "token": 3})
    assert sorted(os.listdir(path)) == before and FaissBackend.load(path)[1]["token"] == 2  # nothing written
    first.save(path, {**MANIFEST, "token": 4})  # a writer's own saves follow each other
    second.save(path, {**MANIFEST, "token": 5}, overwrite=True)  # asked for in so many words
    assert FaissBackend.load(path)[1]["token"] == 5
    # A new memory saved over a folder it never loaded would lose that save's messages: refused too.
    records, dense, sparse = bench.state(6)
    fresh = bench.new_index()
    fresh.add(records, dense, sparse)
    with pytest.raises(backend.SaveConflictError, match="did not load.*overwrite=True"):
        fresh.save(path, {**MANIFEST, "token": 6})
    assert FaissBackend.load(path)[1]["token"] == 5
    fresh.save(tmp_path / "elsewhere", {**MANIFEST, "token": 6})  # a new folder takes it


@pytest.mark.parametrize("lose", ["delete", "empty"])
def test_a_save_whose_current_was_lost_is_neither_empty_nor_overwritten(tmp_path, lose):
    """Without CURRENT the snapshot is still the only copy of the memory: "load, or start anew
    if nothing is saved" must not start anew and then delete it at the first save."""
    path = tmp_path / "mem"
    kept = save(path, token=1)
    if lose == "delete":
        (path / backend.CURRENT).unlink()
        refused(path, f"CURRENT is missing, but the folder holds the snapshot {kept.name}")
    else:
        (path / backend.CURRENT).write_text("")
        refused(path, "CURRENT must hold the name of a snapshot folder")
    records, dense, sparse = bench.state(2)
    fresh = bench.new_index()
    fresh.add(records, dense, sparse)
    with pytest.raises(backend.SaveConflictError, match=f"holds the saved memory {kept.name}.*overwrite=True"):
        fresh.save(path, {**MANIFEST, "token": 2})
    assert kept.is_dir()
    (path / backend.CURRENT).write_text(kept.name)  # what the errors advise
    assert FaissBackend.load(path)[1]["token"] == 1
    fresh.save(path, {**MANIFEST, "token": 2}, overwrite=True)
    assert FaissBackend.load(path)[1]["token"] == 2 and not kept.exists()


def first_save_killed_at_commit(path: Path, monkeypatch) -> None:
    """A first save to ``path`` dies just before its commit: CURRENT's second write (the first says nothing yet)."""
    real, written = backend.replace_file, []

    def killed_at_commit(target, write, durable=False):
        if written:
            raise KeyboardInterrupt
        written.append(target)
        real(target, write, durable=durable)

    monkeypatch.setattr(backend, "replace_file", killed_at_commit)
    with pytest.raises(KeyboardInterrupt):
        save(path, token=1)
    monkeypatch.setattr(backend, "replace_file", real)


def test_a_first_save_killed_before_its_commit_leaves_no_save_and_no_alarm(tmp_path, monkeypatch):
    """Between its snapshot's rename and CURRENT naming it, a first save's snapshot is not a lost
    save: CURRENT says nothing is committed yet, so a restart finds no save and saves anew."""
    path = tmp_path / "mem"
    first_save_killed_at_commit(path, monkeypatch)
    assert [p.name for p in path.iterdir() if p.name.startswith("snapshot-")]  # written, never named
    assert (path / backend.CURRENT).read_text() == backend.NOTHING_YET
    with pytest.raises(FileNotFoundError, match="holds no saved memory"):
        FaissBackend.load(path)
    records, dense, sparse = bench.state(2)
    fresh = bench.new_index()
    fresh.add(records, dense, sparse)
    fresh.save(path, {**MANIFEST, "token": 2})  # no conflict: nothing was committed
    assert FaissBackend.load(path)[1]["token"] == 2
    assert len([p for p in path.iterdir() if p.name.startswith("snapshot-")]) == 1


def test_a_memorys_own_save_is_not_a_lost_one_and_an_empty_current_is_a_first_save(tmp_path, monkeypatch):
    path = tmp_path / "mem"
    records, dense, sparse = bench.state(1)
    mine = bench.new_index()
    mine.add(records, dense, sparse)
    mine.save(path, {**MANIFEST, "token": 1})
    (path / backend.CURRENT).unlink()
    mine.save(path, {**MANIFEST, "token": 2})  # the snapshot without CURRENT is its own last save: nothing lost
    assert FaissBackend.load(path)[1]["token"] == 2
    # An empty CURRENT and no snapshot: a first save, which a kill before its commit leaves as "nothing saved".
    fresh_path = tmp_path / "fresh"
    fresh_path.mkdir()
    (fresh_path / backend.CURRENT).write_text("")
    first_save_killed_at_commit(fresh_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match="holds no saved memory"):
        FaissBackend.load(fresh_path)


def test_a_killed_savers_temporary_current_is_cleaned_up(tmp_path):
    path = tmp_path / "mem"
    save(path, token=1)
    leftover = path / ".CURRENT.0123456789ab.tmp"  # as replace_file names it; its saver died before the rename
    leftover.write_text("snapshot-0123456789ab")
    mine = path / ".CURRENT.notes.tmp"  # not a name saememory gives: left alone
    mine.write_text("the user's own file")
    save(path, token=2)
    assert not leftover.exists() and mine.exists()


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="symbolic links need a POSIX system")
@pytest.mark.parametrize("name", [backend.CURRENT, backend.LOCK, f".{backend.CURRENT}.tmp"])
def test_a_save_never_writes_through_a_link_planted_in_the_folder(tmp_path, name):
    path = tmp_path / "mem"
    save(path, token=1)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    link = path / name
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    records, dense, sparse = bench.state(2)
    index = bench.new_index()
    index.add(records, dense, sparse)
    if name == f".{backend.CURRENT}.tmp":  # the old fixed temporary name: now unused
        index.save(path, {**MANIFEST, "token": 2}, overwrite=True)
        assert FaissBackend.load(path)[1]["token"] == 2
    else:
        with pytest.raises(ValueError, match="symbolic link"):
            index.save(path, {**MANIFEST, "token": 2}, overwrite=True)
    assert victim.read_text() == "the user's own file"


@pytest.mark.parametrize("change, match", [
    (lambda p, tf, n: p.update(k1="x"), "k1 > 0"),
    (lambda p, tf, n: p.update(k1=float("nan")), "k1 > 0"),
    (lambda p, tf, n: p.update(b=-40), "0 <= b <= 1"),
    (lambda p, tf, n: p.update(terms=p["terms"][:1] * len(p["terms"])), "distinct"),
    (lambda p, tf, n: n.__setitem__(0, n[0] + 3), "number of words"),
    (lambda p, tf, n: tf.data.__setitem__(0, 0.5), "whole positive"),
])
def test_load_refuses_tampered_bm25_files(tmp_path, change, match):
    """A file edited with its checksum updated: BM25 would give NaN or wrong scores, or fail at search."""
    path = tmp_path / "mem"
    snapshot = save(path)
    vocab, tf_file, lengths_file = snapshot / "bm25_vocab.json", snapshot / "bm25_tf.npz", snapshot / "bm25_lengths.npy"
    params = json.loads(vocab.read_text())
    tf, lengths = sp.load_npz(tf_file).tocsr(), np.load(lengths_file)
    change(params, tf, lengths)
    vocab.write_text(json.dumps(params))
    sp.save_npz(tf_file, tf)
    np.save(lengths_file, lengths)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    for file in (vocab, tf_file, lengths_file):
        manifest["files"][file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=match):
        FaissBackend.load(path)


def test_a_save_and_a_shared_code_cache_make_files_others_may_read(tmp_path):
    """Fresh names are made with O_EXCL, and keep the permissions any new file gets (not 0600)."""
    save(tmp_path / "mem")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "mem" / backend.CURRENT).stat().st_mode & 0o777 == 0o666 & ~umask
