"""saememory.backends.milvus on its own: per-user message ids, refused collections and the idle connection.

These build ``MilvusBackend`` directly (dim 4, d_sae 8, random vectors), on a real milvus-lite
engine in a temporary file, without an encoder.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

from saememory.backends.milvus import LITE_CONNECTION, MilvusBackend

DIM, D_SAE = 4, 8
IDENTITY = {"model": "m", "pooling": "mean", "sae": {"name": "s", "sha256": "aa"}}


def record(user: str, message_id: str, content: str, session: str = "s") -> dict:
    return {"id": message_id, "user_id": user, "session_id": session, "role": "user", "timestamp": None,
            "content": content, "metadata": {}}


def vectors(n: int, seed: int = 0) -> tuple[np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, DIM)).astype(np.float32), sp.random(
        n, D_SAE, density=0.5, format="csr", dtype=np.float32, random_state=seed)


def backend(db, collection: str = "c", identity: dict | None = IDENTITY) -> MilvusBackend:
    opened = MilvusBackend(str(db), collection)
    opened.open(DIM, D_SAE, identity=identity)
    return opened


def test_two_users_may_hold_the_same_id(tmp_path):
    b = backend(tmp_path / "x.db")
    b.add([record("alice", "m1", "alice's tea"), record("bob", "m1", "bob's coffee"), record("alice", "m2", "alice's")],
          *vectors(3))
    assert len(b) == 3 and b.users() == ["alice", "bob"]
    assert b.stored("alice", ["m1", "m2", "m3"]) == {"m1", "m2"} and b.stored("bob", ["m1", "m2"]) == {"m1"}
    assert b.get("alice", "m1")["content"] == "alice's tea" and b.get("bob", "m1")["content"] == "bob's coffee"
    assert b.get("bob", "m2") is None and b.get("carol", "m1") is None  # another user's id looks missing
    assert [r["content"] for r, _ in b.fetch("bob", ["m2", "m1"])] == ["bob's coffee"]
    assert [r["content"] for r in b.records("alice")] == ["alice's tea", "alice's"]

    q_dense, q_sparse = vectors(1, seed=1)
    ids, _ = b.score("bob", None, q_dense[0], q_sparse, candidates=10, query_text="tea", include=["m1", "m2"])
    assert ids == ["m1"]

    b.replace([record("bob", "m1", "bob's new coffee")], *vectors(1, seed=2))  # an upsert of bob's m1 only
    assert len(b) == 3 and b.get("alice", "m1")["content"] == "alice's tea"
    assert b.get("bob", "m1")["content"] == "bob's new coffee"

    b.delete("bob", ["m1", "m2"])  # bob's m1 only; alice's m2 is not bob's
    assert b.stored("bob", ["m1"]) == set() and b.stored("alice", ["m1", "m2"]) == {"m1", "m2"} and len(b) == 2
    b.close()


def test_a_collection_of_the_previous_schema_is_refused(tmp_path):
    from pymilvus import DataType, MilvusClient

    db = str(tmp_path / "x.db")
    client = MilvusClient(db, **LITE_CONNECTION)  # the schema saememory made before ids were per user
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    for name in ("user_id", "session_id", "role", "timestamp", "text"):
        schema.add_field(name, DataType.VARCHAR, max_length=512)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("truncated", DataType.BOOL)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    client.create_collection("c", schema=schema, properties={"saememory.d_sae": str(D_SAE)})
    with pytest.raises(ValueError, match=r"'c' at .*x\.db was made by an older saememory.*another collection"):
        backend(db)
    backend(db, collection="c2").close()  # the fix the message names


def test_a_collection_made_with_another_encoder_is_refused(tmp_path):
    db = tmp_path / "x.db"
    backend(db).close()
    reordered = {"sae": {"sha256": "aa", "name": "s"}, "pooling": "mean", "model": "m"}
    backend(db, identity=reordered).close()  # the same identity reopens it
    other_sae = {**IDENTITY, "sae": {"name": "s", "sha256": "bb"}}  # same widths, another SAE
    with pytest.raises(ValueError, match=r"'c' .* another encoder: identity\.sae\.sha256 is 'aa' there but 'bb' now\. "
                                         r"Use the encoder it was made with or another collection"):
        backend(db, identity=other_sae)
    with pytest.raises(ValueError, match=r"identity\.pooling is 'mean' there but 'cls' now"):
        backend(db, identity={**IDENTITY, "pooling": "cls"})
    with pytest.raises(ValueError, match=r"identity\.extra is absent there but 1 now"):
        backend(db, identity={**IDENTITY, "extra": 1})
    # Made before hygiene left form features out of the codes: the error says which setting fits.
    with pytest.raises(ValueError, match=r"sae_hygiene is absent there .*EncoderConfig\(hygiene=False\)"):
        backend(db, identity={**IDENTITY, "sae_hygiene": "5f2cdc41542250c4"})
    backend(db, "bare", identity=None).close()  # made without an identity
    with pytest.raises(ValueError, match=r"'bare' .* records no encoder identity.*another collection"):
        backend(db, collection="bare")
    with pytest.raises(ValueError, match=r"identity=.* is not JSON-serialisable"):
        backend(db, collection="new", identity={"model": object()})


def test_milvus_lite_connections_send_no_keepalive_pings(monkeypatch, tmp_path):
    """Fast check of the cause: pymilvus' 10 s pings are turned off for the embedded engine only."""
    import pymilvus

    made = []

    class Recorder:
        def __init__(self, uri, **kwargs):
            made.append(kwargs)
            raise RuntimeError("recorded")

    monkeypatch.setattr(pymilvus, "MilvusClient", Recorder)
    for uri in (str(tmp_path / "x.db"), "http://localhost:19530"):
        with pytest.raises(RuntimeError, match="recorded"):
            MilvusBackend(uri).open(DIM, D_SAE)
    lite, server = made
    assert lite["dedicated"] is True  # a shared connection may carry another client's options
    assert lite["grpc_options"]["grpc.keepalive_time_ms"] == 2**31 - 1  # gRPC reads INT_MAX as "never"
    assert lite["grpc_options"]["grpc.keepalive_permit_without_calls"] == 0
    assert server == {}  # a Milvus server accepts pymilvus' pings: its defaults stay


class Tap:
    """A TCP relay to a local port that counts the connections and the bytes clients send."""

    def __init__(self, port: int) -> None:
        self.target, self.connections, self.sent = port, 0, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                self.sent += len(data) if count else 0
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()


SETTLE, IDLE = 1, 15  # seconds; pymilvus' first keepalive ping is due 10 s after the last call's reply


def test_an_idle_milvus_lite_client_sends_nothing(monkeypatch, tmp_path):
    """The cause of "Too many pings", then "Fail connecting to server on 127.0.0.1:...".

    pymilvus pings every 10 s, calls or not; milvus-lite's grpcio server allows no ping without
    calls and sends GOAWAY "too_many_pings" at its third strike (two idle pings and one riding
    on the next call), dropping that call's connection. Watched through a relay: while idle,
    the client sends no byte, and its one connection serves the next call.
    """
    from milvus_lite.server_manager import server_manager_instance

    start = server_manager_instance.start_and_get_uri
    taps = []

    def tapped(path, args=None):  # pymilvus asks milvus-lite where the engine for a .db file listens
        port = int(start(path, args).rsplit(":", 1)[1])
        taps.append(Tap(port))
        return f"http://127.0.0.1:{taps[-1].port}"

    monkeypatch.setattr(server_manager_instance, "start_and_get_uri", tapped)
    b = backend(tmp_path / "x.db")
    b.add([record("alice", "m1", "tea")], *vectors(1))
    assert b.get("alice", "m1")["content"] == "tea"
    time.sleep(SETTLE)
    tap, sent = taps[0], taps[0].sent
    time.sleep(IDLE)
    assert tap.sent == sent, f"the idle client sent {tap.sent - sent} bytes (keepalive pings)"
    assert b.get("alice", "m1")["content"] == "tea" and tap.connections == 1
    b.close()
    tap.listener.close()


MANIFEST = {"encoder": {}, "settings": {}}


def test_a_milvus_save_never_replaces_another_memorys_save(tmp_path):
    """A folder holding an in-process save (its only copy) or another collection's manifest is
    not re-pointed by a Milvus save; its own collection's manifest is replaced freely."""
    from saememory.backends import snapshot
    from saememory.backends.faiss import FaissBackend

    faiss = FaissBackend()
    faiss.open(DIM, D_SAE)
    faiss.add([record("alice", "m1", "alice's only copy")], *vectors(1))
    faiss.save(tmp_path / "alice", MANIFEST)
    b, other = backend(tmp_path / "x.db"), backend(tmp_path / "x.db", collection="other")
    with pytest.raises(snapshot.SaveConflictError, match="did not load.*overwrite=True"):
        b.save(tmp_path / "alice", MANIFEST)
    assert FaissBackend.load(tmp_path / "alice")[0].get("alice", "m1")["content"] == "alice's only copy"
    b.save(tmp_path / "mine", MANIFEST)
    b.save(tmp_path / "mine", MANIFEST)  # its own saves in a row
    backend_again = MilvusBackend(str(tmp_path / "x.db"), "c")
    backend_again.open(DIM, D_SAE, identity=IDENTITY)
    backend_again.save(tmp_path / "mine", MANIFEST)  # another writer of the same collection: nothing to undo
    with pytest.raises(snapshot.SaveConflictError):
        other.save(tmp_path / "mine", MANIFEST)  # another collection
    other.save(tmp_path / "mine", MANIFEST, overwrite=True)
    assert snapshot.read_manifest(tmp_path / "mine")[1]["milvus"]["collection"] == "other"
    for opened in (b, other, backend_again):
        opened.close()


def test_loading_a_milvus_save_never_creates_what_it_names(tmp_path):
    b = backend(tmp_path / "x.db")
    b.add([record("alice", "m1", "tea")], *vectors(1))
    b.save(tmp_path / "saved", MANIFEST)
    b.close()
    loaded, manifest = MilvusBackend.load(tmp_path / "saved", identity=IDENTITY)
    assert loaded.get("alice", "m1")["content"] == "tea"
    loaded.close()
    # The data moved away (a copy: milvus-lite keeps a lock on the open original in this process).
    import shutil

    from saememory.backends import snapshot

    shutil.copytree(tmp_path / "x.db", tmp_path / "moved.db")
    _, manifest = snapshot.read_manifest(tmp_path / "saved")
    manifest["milvus"]["uri"] = str(tmp_path / "gone.db")  # as the manifest reads when its file is gone
    snapshot.write_snapshot(tmp_path / "saved", {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    with pytest.raises(ValueError, match="gone.db, which is gone.*backend=MilvusBackend"):
        MilvusBackend.load(tmp_path / "saved", identity=IDENTITY)
    assert not (tmp_path / "gone.db").exists()  # and made no new, empty file in its place
    with pytest.raises(ValueError, match="names the collection 'c', not 'saememory'"):
        MilvusBackend.load(tmp_path / "saved", identity=IDENTITY, backend=MilvusBackend(str(tmp_path / "moved.db")))
    moved, _ = MilvusBackend.load(tmp_path / "saved", identity=IDENTITY,  # as the error advises
                                  backend=MilvusBackend(str(tmp_path / "moved.db"), "c"))
    assert moved.get("alice", "m1")["content"] == "tea"
    moved.close()
    (tmp_path / "empty.db").mkdir()  # something there, but not the collection: not created either
    with pytest.raises(ValueError, match="holds no collection 'c'"):
        MilvusBackend.load(tmp_path / "saved", identity=IDENTITY, backend=MilvusBackend(str(tmp_path / "empty.db"), "c"))


def test_a_manifest_naming_a_server_is_followed_only_when_the_caller_names_it(tmp_path):
    """An edited manifest must not send the memory's later messages to a server of its choosing."""
    from saememory.backends import snapshot

    snapshot.write_snapshot(tmp_path / "saved", {**MANIFEST, "backend": "milvus", "dim": DIM, "d_sae": D_SAE,
                                                 "index_type": None, "n_messages": 1,
                                                 "milvus": {"uri": "http://evil.example:19530", "collection": "c",
                                                            "index": "HNSW"}})
    with pytest.raises(ValueError, match="names the Milvus server 'http://evil.example:19530'.*backend=MilvusBackend"):
        MilvusBackend.load(tmp_path / "saved", identity=IDENTITY)
    with pytest.raises(ValueError, match="names the collection 'c', not 'd'"):
        MilvusBackend.load(tmp_path / "saved", backend=MilvusBackend("http://localhost:19530", "d"))
