"""saememory.memory: retrieval, isolation, delete/update, persistence and bad input.

Tests taking ``make`` or ``memory`` run on both backends: in-process (FAISS + CSR) and Milvus
(a real milvus-lite engine, started by the test session in a temporary file).
"""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import Encoded, Encoder, EncoderConfig, Message, SAEMemory, format_hit
from saememory.backends import FaissBackend, MilvusBackend
from saememory.arrays import as_stored
from saememory.lexical import LexicalIndex
from tests.helpers import CONVERSATION, DISTRACTORS, PLANTED, QUESTION, to_float32_format

def ranking(memory: SAEMemory, query: str = QUESTION, **kwargs) -> list[tuple[str, float]]:
    return [(h.id, round(h.score, 6)) for h in memory.search(query, k=len(memory), **kwargs)]


@pytest.fixture
def local_memory(encoder) -> SAEMemory:
    """The conversation in the in-process backend, for tests of its file format."""
    mem = SAEMemory(encoder)
    mem.add(CONVERSATION)
    return mem


@pytest.fixture
def memory(make) -> SAEMemory:
    """The conversation of tests/helpers.py, on the backend under test."""
    mem = make()
    mem.add(CONVERSATION)
    return mem


# Retrieval and explanations ------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["sqrt", "weighted", "rrf", "dense", "sparse"])
def test_planted_fact_ranks_first(memory, fusion):
    hits = memory.search(QUESTION, k=3, fusion=fusion)
    assert hits[0].id == "planted", [h.content for h in hits]


def test_hit_carries_scores_and_features(memory, make):
    hit = memory.search(QUESTION, k=1)[0]
    assert hit.content == PLANTED and hit.rank == 1 and hit.session_id == "s2"
    assert hit.timestamp == "2024-04-12" and hit.role == "user" and hit.user_id == "default"
    # The default: z-scored signals, summed with weights dense 2, sparse 1, bm25 1, then reordered
    # by words (its own adjustment; without it the score is the fusion alone).
    assert set(hit.signals) == {"dense", "sparse", "bm25"} and set(hit.adjustments) == {"words"}
    weights = {"dense": 2.0, "sparse": 1.0, "bm25": 1.0}
    fused = make(word_weight=0.0)
    fused.add(CONVERSATION)
    plain = fused.search(QUESTION, k=1)[0]
    assert plain.id == hit.id and plain.adjustments == {}
    assert plain.score == pytest.approx(sum(weights[n] * s["normalized"] for n, s in plain.signals.items()), abs=1e-6)
    assert 0 < hit.sparse_score <= 1 and -1 <= hit.dense_score <= 1
    assert len(hit.features) == 5
    activations = [f["activation"] for f in hit.features]
    assert activations == sorted(activations, reverse=True) and activations[0] > 0
    assert hit.shared_features and all(f["contribution"] > 0 for f in hit.shared_features)
    # The shipped SAE's labels and families reach the hit.
    assert all(f["label"] for f in hit.features + hit.shared_features)
    assert any(f.get("family") for f in hit.features + hit.shared_features)
    # A feature's phrase is its words in context where one holds; format_hit puts it first.
    listed = hit.features + hit.shared_features
    assert all(f["phrase"] == memory.encoder.sae.phrase(f["id"]) for f in listed)
    phrased = next((f for f in listed if f["phrase"]), None)
    text = format_hit(hit.content, hit.to_metadata())
    assert phrased is not None and f"#{phrased['id']} {phrased['phrase']!r} ({phrased['label']!r})" in text
    share = {name: f"{'-' if v['normalized'] < 0 else ''}{v['share']:.0%}"  # what each signal weighs in the score
             for name, v in hit.signals.items()}
    assert f"[dense {share['dense']} · SAE {share['sparse']} · BM25 {share['bm25']}]" in text.splitlines()[0]
    # With every shared feature listed, contributions add up to the share of the sparse score
    # they carry. By default the features hygiene hides are out of the codes, so the listed ones
    # carry all of it; kept in the codes (hygiene=False), they carry the rest.
    for hygiene in (True, False):
        enc = Encoder(EncoderConfig(hygiene=hygiene), model=memory.encoder.model, sae=memory.encoder.sae)
        full = make(enc, top_features=10_000)
        full.add(CONVERSATION)
        top = full.search(QUESTION, k=1)[0]
        listed = sum(f["contribution"] for f in top.shared_features)
        assert listed == pytest.approx(top.explained_share * top.sparse_score, abs=1e-4)
        assert top.explained_share == pytest.approx(1.0, abs=1e-4) if hygiene else 0 < top.explained_share < 1


def test_poster_formula_on_raw_scores(make):
    poster = make(fusion="sqrt", normalization="none", dense_weight=1.0, sparse_weight=1.0, bm25_weight=0.0,
                  word_weight=0.0)
    poster.add(CONVERSATION)
    for hit in poster.search(QUESTION, k=5):
        assert hit.score == pytest.approx(np.sqrt(max(hit.dense_score, 0) ** 2 + hit.sparse_score**2), abs=1e-6)
        assert set(hit.signals) == {"dense", "sparse"}


def test_k_larger_than_memory_returns_everything(memory):
    assert len(memory.search(QUESTION, k=1000)) == len(CONVERSATION)


def test_min_score_filters(memory):
    scores = [h.score for h in memory.search(QUESTION, k=100)]
    threshold = scores[2]
    kept = memory.search(QUESTION, k=100, min_score=threshold)
    assert len(kept) == 3 and all(h.score >= threshold for h in kept)


def test_session_filter(memory):
    hits = memory.search(QUESTION, k=100, session_id="s1")
    assert {h.session_id for h in hits} == {"s1"} and len(hits) == 6


def test_explain_any_message(memory):
    hit = memory.explain(QUESTION, "planted")
    assert hit.id == "planted" and hit.rank >= 1 and hit.shared_features


# Isolation ------------------------------------------------------------------------------------


def test_users_never_see_each_other(make):
    memory = make()
    memory.add([{"content": "Alice's secret: the vault code is 4812.", "user_id": "alice", "id": "a1"}])
    memory.add([{"content": "Bob likes jazz records.", "user_id": "bob", "id": "b1"},
                {"content": "Bob's dentist is on Main Street.", "user_id": "bob", "id": "b2"}])
    for query in ["vault code", "What is Alice's secret vault code 4812?", "jazz"]:
        for k in (1, 10, 1000):
            assert {h.user_id for h in memory.search(query, k=k, user_id="bob")} <= {"bob"}
            assert {h.id for h in memory.search(query, k=k, user_id="alice")} == {"a1"}
    assert memory.search("vault code", user_id="carol") == []  # unknown user: no memories
    assert memory.search("vault code") == []  # the default user owns nothing here
    assert memory.search("vault code", user_id="bob", session_id="default", k=5)
    assert memory.users() == ["alice", "bob"]


def test_isolation_survives_deletes_and_approximate_index(make):
    memory = make(candidates=2, index="HNSW32")
    memory.add([{"content": t, "user_id": "u1" if i % 2 else "u2"} for i, t in enumerate(DISTRACTORS)])
    u1 = [m["id"] for m in memory.messages("u1")]
    memory.delete(u1[:3], user_id="u1")
    hits = memory.search("hiking in the mountains", k=50, user_id="u1")
    assert {h.user_id for h in hits} == {"u1"} and not set(u1[:3]) & {h.id for h in hits}


# Delete and update ---------------------------------------------------------------------------


def test_delete(memory):
    memory.delete("planted")
    assert "planted" not in [h.id for h in memory.search(QUESTION, k=100)]
    assert len(memory) == len(CONVERSATION) - 1
    with pytest.raises(KeyError, match="planted"):
        memory.get("planted")


def test_delete_unknown_id_deletes_nothing(memory):
    first_id = memory.messages()[0]["id"]
    with pytest.raises(KeyError, match="nope"):
        memory.delete([first_id, "nope"])
    assert len(memory) == len(CONVERSATION)


def test_update_replaces_content(memory):
    memory.update([{"id": "planted", "content": "My sister Ana now lives in Porto.", "session_id": "s2"}])
    assert memory.get("planted")["content"] == "My sister Ana now lives in Porto."
    assert len(memory) == len(CONVERSATION)
    assert memory.search("sister Porto", k=1)[0].id == "planted"


def test_update_that_fails_in_the_engine_keeps_the_stored_version(memory, monkeypatch):
    before = memory.get("planted")

    def broken(*args, **kwargs):
        raise RuntimeError("engine went away")

    target = memory.backend.client if isinstance(memory.backend, MilvusBackend) else memory.backend
    monkeypatch.setattr(target, "upsert" if isinstance(memory.backend, MilvusBackend) else "add", broken)
    with pytest.raises(RuntimeError, match="engine went away"):
        memory.update([{"id": "planted", "content": "My sister Ana now lives in Porto.", "session_id": "s2"}])
    monkeypatch.undo()
    assert memory.get("planted") == before and len(memory) == len(CONVERSATION)


def test_update_unknown_or_missing_id(memory):
    with pytest.raises(KeyError, match="ghost"):
        memory.update([{"id": "ghost", "content": "x"}])
    with pytest.raises(KeyError, match="no id"):
        memory.update([{"content": "x"}])
    assert len(memory) == len(CONVERSATION)


# Persistence ---------------------------------------------------------------------------------


def test_save_load_round_trip(memory, tmp_path, encoder):
    memory.delete(memory.messages(session_id="s1")[0]["id"])  # a tombstone to compact
    before, n = ranking(memory), len(memory)
    memory.save(tmp_path / "mem")
    loaded = SAEMemory.load(tmp_path / "mem", encoder=encoder)
    assert ranking(loaded) == before
    assert loaded.get("planted") == memory.get("planted")
    assert ranking(SAEMemory.load(tmp_path / "mem")) == before  # encoder rebuilt from the manifest
    loaded.add([{"content": "A new memory after loading."}])
    assert len(loaded) == n + 1
    files = {p.name for p in (tmp_path / "mem").rglob("*") if p.is_file()}
    if isinstance(memory.backend, FaissBackend):
        assert {"manifest.json", "dense_values.npy", "sparse_values.npy", "records.jsonl", "CURRENT"} <= files
        assert "faiss.index" not in files  # exact search keeps no FAISS index
    else:  # the data lives in Milvus; the manifest says where
        assert files == {"manifest.json", "CURRENT", "LOCK"} and len(memory) == n + 1
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)


def test_interrupted_save_keeps_previous(local_memory, tmp_path, monkeypatch):
    memory = local_memory
    path = tmp_path / "mem"
    memory.save(path)
    before = ranking(memory)
    memory.add([{"content": "Something said after the first save."}])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(LexicalIndex, "save", crash)  # dies midway: arrays written, BM25 and records not
    with pytest.raises(OSError, match="disk full"):
        memory.save(path)
    monkeypatch.undo()
    assert ranking(SAEMemory.load(path, encoder=memory.encoder)) == before
    memory.save(path)  # a later save succeeds and cleans up the leftovers
    assert len(SAEMemory.load(path, encoder=memory.encoder)) == len(memory)
    assert [p.name for p in path.iterdir() if p.name.startswith(".tmp-")] == []


def test_load_errors_name_the_problem(local_memory, tmp_path, encoder):
    memory = local_memory
    with pytest.raises(FileNotFoundError, match="no saved memory"):
        SAEMemory.load(tmp_path / "empty")
    path = tmp_path / "mem"
    memory.save(path)
    snapshot = path / (path / "CURRENT").read_text()
    (snapshot / "dense_values.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SAEMemory.load(path, encoder=encoder)
    memory.save(path)
    snapshot = path / (path / "CURRENT").read_text()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["n_messages"] += 1
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="corrupt.*shape"):
        SAEMemory.load(path, encoder=encoder)
    manifest["format_version"] = 99
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 99"):
        SAEMemory.load(path, encoder=encoder)


def test_load_with_another_sae_fails(memory, tmp_path, encoder):
    # The manifest's encoder identity is checked before any backend is opened.
    memory.save(tmp_path / "mem")
    other = Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model)
    with pytest.raises(ValueError, match="another encoder: sae"):
        SAEMemory.load(tmp_path / "mem", encoder=other)
    mean = Encoder(EncoderConfig(pooling="mean"), model=encoder.model, sae=encoder.sae)
    with pytest.raises(ValueError, match="pooling"):
        SAEMemory.load(tmp_path / "mem", encoder=mean)
    whole = Encoder(EncoderConfig(split="none"), model=encoder.model, sae=encoder.sae)
    with pytest.raises(ValueError, match=r"split is 'sentences' in the saved memory but .*EncoderConfig\(split='sentences'\)"):
        SAEMemory.load(tmp_path / "mem", encoder=whole)
    # A memory saved with whole messages has no "split" in its identity (as saved before split existed).
    old = SAEMemory(whole)
    old.add([{"id": "a", "content": "My sister lives in Lisbon."}])
    old.save(tmp_path / "whole")
    with pytest.raises(ValueError, match=r"split is .* in the saved memory but 'sentences' now.*EncoderConfig\(split='none'\)"):
        SAEMemory.load(tmp_path / "whole", encoder=encoder)
    assert SAEMemory.load(tmp_path / "whole").encoder.config.split == "none"  # rebuilt from the save
    # A memory whose codes keep every feature (hygiene=False, as saved before hygiene existed).
    kept = Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae)
    every = SAEMemory(kept)
    every.add([{"id": "a", "content": "My sister lives in Lisbon."}])
    every.save(tmp_path / "every")
    with pytest.raises(ValueError, match=r"sae_hygiene is absent in the saved memory .*EncoderConfig\(hygiene=False\)"):
        SAEMemory.load(tmp_path / "every", encoder=encoder)
    assert SAEMemory.load(tmp_path / "every").encoder.config.hygiene is False
    with pytest.raises(ValueError, match=r"sae_hygiene is .* but absent now.*EncoderConfig\(hygiene=True\)"):
        SAEMemory.load(tmp_path / "mem", encoder=kept)
    # The SAE's hygiene.json changed since the save: its codes left out other features.
    changed_sae = copy.copy(encoder.sae)
    changed_sae.hidden = dict(list(encoder.sae.hidden.items())[1:])
    changed = Encoder(EncoderConfig(), model=encoder.model, sae=changed_sae)
    with pytest.raises(ValueError, match="hides other features than when the memory was saved"):
        SAEMemory.load(tmp_path / "mem", encoder=changed)


# Bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("query,error,match", [
    ("", ValueError, "empty"),
    ("   \n", ValueError, "empty"),
    (None, TypeError, "str"),
    (42, TypeError, "str"),
])
def test_bad_query(memory, query, error, match):
    with pytest.raises(error, match=match):
        memory.search(query)


@pytest.mark.parametrize("k,error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_k(memory, k, error):
    with pytest.raises(error, match="k"):
        memory.search(QUESTION, k=k)


def test_empty_memory(make):
    assert make().search(QUESTION) == []


@pytest.mark.parametrize("message,error,match", [
    ({"content": 3}, TypeError, "content must be a str"),
    ({"content": None}, TypeError, "content must be a str"),
    ({"content": "  "}, ValueError, "empty"),
    ({"role": "user"}, TypeError, "content"),
    ("just a string", TypeError, "Message"),
    ({"content": "ok", "user_id": 7}, TypeError, "user_id"),
])
def test_bad_messages_store_nothing(memory, message, error, match):
    with pytest.raises(error, match=match):
        memory.add([{"content": "A valid message in the same batch."}, message])
    assert len(memory) == len(CONVERSATION)


def test_duplicate_ids(memory):
    with pytest.raises(ValueError, match="repeated"):
        memory.add([{"content": "a", "id": "x"}, {"content": "b", "id": "x"}])
    with pytest.raises(ValueError, match="already stored"):
        memory.add([{"content": "again", "id": "planted"}])
    assert memory.get("planted")["content"] == PLANTED and len(memory) == len(CONVERSATION)


def test_long_message_is_kept_and_flagged(memory):
    memory.add([Message(content="My sister Ana lives in Lisbon. " + "Filler words go on and on. " * 200, id="long")])
    assert memory.get("long")["truncated"] is True
    hit = memory.explain(QUESTION, "long")
    assert hit.truncated is True


class _BrokenEncoder:
    """A custom encoder that returns what it is told to."""

    def __init__(self, real: Encoder, mode: str) -> None:
        self.real, self.mode = real, mode
        self.dim, self.d_sae, self.sae = real.dim, real.d_sae, real.sae

    def identity(self):
        return {"model": "broken"}

    def encode_query(self, text):
        return self.real.encode_query(text)

    def encode_documents(self, texts, show_progress=False):
        out = self.real.encode_documents(texts)
        if self.mode == "nan":
            out.dense[0, 0] = np.nan
        elif self.mode == "narrow":
            out = Encoded(out.dense[:, :10], out.sparse, out.truncated)
        elif self.mode == "rows":
            out = Encoded(out.dense[:1], sp.csr_matrix(out.sparse[:1]), out.truncated[:1])
        return out


@pytest.mark.parametrize("mode,match", [("nan", "NaN"), ("narrow", "shape"), ("rows", "shape")])
def test_bad_custom_encoder_output_stores_nothing(make, encoder, mode, match):
    memory = make(_BrokenEncoder(encoder, "ok"))
    memory.add([{"content": "kept"}])
    memory.encoder = _BrokenEncoder(encoder, mode)
    with pytest.raises(ValueError, match=match):
        memory.add([{"content": "one"}, {"content": "two"}])
    assert len(memory) == 1 and memory.search("kept")[0].content == "kept"


def test_bad_settings(encoder):
    with pytest.raises(ValueError, match="fusion"):
        SAEMemory(encoder, fusion="sum")
    with pytest.raises(ValueError, match="index_type"):
        SAEMemory(encoder, backend=FaissBackend("NotAnIndex"))
    with pytest.raises(ValueError, match="candidates"):
        SAEMemory(encoder, candidates=0)


def test_concurrent_adds_and_searches(make):
    memory = make()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                memory.add([{"content": f"Writer {n} note {i}: {DISTRACTORS[(n + i) % len(DISTRACTORS)]}", "id": f"{n}-{i}"}])
        except BaseException as err:  # surfaced below
            errors.append(err)

    def reader() -> None:
        try:
            for _ in range(10):
                for hit in memory.search("hiking plans", k=5):
                    assert memory.get(hit.id)["content"] == hit.content
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(memory) == 20


# Signals, fusion and selection -----------------------------------------------------------------


def test_every_signal_is_explained(make):
    memory = make(dense_weight=1.0, bm25_weight=1.0, sparse_weight=1.0, normalization="minmax", fusion="weighted",
                  word_weight=0.0)
    memory.add(CONVERSATION)
    hit = memory.search("Lisbon sister", k=1)[0]
    assert hit.id == "planted" and hit.bm25_score > 0
    assert set(hit.signals) == {"dense", "sparse", "bm25"}
    assert sum(s["share"] for s in hit.signals.values()) == pytest.approx(1.0)
    assert hit.signals["bm25"]["raw"] == pytest.approx(hit.bm25_score)
    assert hit.score == pytest.approx(sum(s["normalized"] for s in hit.signals.values()))
    assert "signals" in hit.to_metadata() and "calibrated_score" in hit.to_metadata()


def test_lexical_signal_alone(make):
    memory = make(fusion="bm25", normalization="none", word_weight=0.0)
    memory.add(CONVERSATION)
    hits = memory.search("octopuses documentary", k=3)
    assert "octopuses" in hits[0].content and hits[0].score == pytest.approx(hits[0].bm25_score)


def test_adaptive_selection_returns_what_stands_out(make):
    memory = make(selection="adaptive", threshold=2.0)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=10)
    assert 1 <= len(hits) < 10 and hits[0].id == "planted"
    assert all(h.calibrated_score >= 2.0 for h in hits[1:])
    strict = make(selection="adaptive", threshold=100.0)
    strict.add(CONVERSATION)
    assert [h.id for h in strict.search(QUESTION, k=10)] == ["planted"]  # at least the best one


def test_new_settings_are_validated(encoder):
    for kwargs, match in [({"bm25_weight": -1}, "bm25_weight"), ({"normalization": "l2"}, "normalization"),
                          ({"selection": "all"}, "selection"), ({"sparse_weight": "1"}, "sparse_weight"),
                          ({"bm25_stemmer": "klingon"}, "bm25_stemmer='klingon'.*Snowball")]:
        with pytest.raises(ValueError, match=match):
            SAEMemory(encoder, **kwargs)


def test_update_rejects_the_same_id_twice(memory):
    with pytest.raises(ValueError, match="once per call"):
        memory.update([{"id": "planted", "content": "a"}, {"id": "planted", "content": "b"}])
    assert memory.get("planted")["content"] == PLANTED and len(memory) == len(CONVERSATION)
    with pytest.raises(TypeError, match="Message 0"):
        memory.update(["not a message"])


def test_hits_carry_feature_families(make, encoder):
    import copy

    sae = copy.copy(encoder.sae)
    code = encoder.encode_documents([PLANTED]).sparse
    strongest = int(code.indices[np.argmax(code.data)])
    sae.set_families({strongest: {"parent": 7, "children": [], "root": 7, "depth": 1},
                      7: {"parent": None, "children": [strongest], "root": 7, "depth": 0}})
    memory = make(Encoder(encoder.config, model=encoder.model, sae=sae))
    memory.add(CONVERSATION)
    top = next(f for f in memory.explain(QUESTION, "planted").features if f["id"] == strongest)
    assert top["family"]["root"] == 7 and top["family"]["size"] == 2


def test_normalizing_over_top_lists(make, encoder):
    memory = make(normalize_top=3)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=len(CONVERSATION))
    for name in ("dense", "sparse", "bm25"):
        assert sum(h.signals[name]["normalized"] > 0 for h in hits) <= 3  # only each signal's top 3 count
    assert hits[0].id == "planted"
    with pytest.raises(ValueError, match="normalize_top"):
        SAEMemory(encoder, normalize_top=0)


# Both backends: isolation under every filter, equal rankings, Milvus' own rules -----------------

TENANTS = ["alice", 'o"hara \\ \'x\'', "bob"]  # a user id with quotes and a backslash, escaped in filters


def _tenant_messages() -> list[dict]:
    return [{"content": f"{text} (note {i} of {user})", "user_id": user, "session_id": f"s{i % 3}", "id": f"{user}-{i}"}
            for u, user in enumerate(TENANTS) for i, text in enumerate(DISTRACTORS[u::2][:6])]


@pytest.mark.parametrize("candidates", [1, 200])
def test_no_query_returns_another_users_message(make, candidates):
    memory = make(candidates=candidates)
    memory.add(_tenant_messages())
    memory.delete(f"{TENANTS[0]}-0", user_id=TENANTS[0])
    queries = [memory.encoder.encode_query(q) for q in ["hiking in the mountains", 'note of o"hara', "alice's pasta"]]
    texts = ["hiking in the mountains", 'note of o"hara', "alice's pasta"]
    users = TENANTS + ["carol", 'alice" || user_id != "x']  # the last tries to break out of the filter
    for user in users:
        owned = memory.messages(user)
        assert {m["user_id"] for m in owned} <= {user}
        for session in [None, "s0", "s1", "s2", "no-such-session"]:
            expected = {m["id"] for m in memory.messages(user, session)}
            assert expected <= {m["id"] for m in owned}
            for q, text in zip(queries, texts):
                for lexical in (text, None):  # with and without the BM25 candidates
                    include = [f"{TENANTS[2]}-1", f"{TENANTS[0]}-2"]  # explain() of another user's id
                    ids, signals = memory.backend.score(user, session, q.dense[0], q.sparse[0], candidates, lexical, include)
                    assert set(ids) <= expected and all(len(v) == len(ids) for v in signals.values())
                    if candidates >= 6:  # every message of the user is a candidate
                        assert set(ids) == expected
    for user in users:  # and end to end, through fusion and the hits' records
        for session in [None, "s1"]:
            hits = memory.search("note of bob", k=50, user_id=user, session_id=session)
            assert {h.user_id for h in hits} <= {user} and (session is None or {h.session_id for h in hits} <= {session})
    assert memory.users() == sorted(TENANTS)
    assert {h.user_id for h in memory.search("pasta", user_id=TENANTS[1])} == {TENANTS[1]}


class _AsStoredInProcess:
    """An encoder whose messages' vectors and codes are rounded as the in-process backend stores them
    (int8 with a scale per row), so that Milvus (float32) holds the very values FaissBackend scores."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_documents(self, texts, show_progress=False):
        encoded = self._encoder.encode_documents(texts, show_progress=show_progress)
        dense, sparse = as_stored(encoded.dense, encoded.sparse)
        return Encoded(dense=dense, sparse=sparse, truncated=encoded.truncated)


def test_milvus_ranks_as_in_process_when_every_message_is_a_candidate(encoder, tmp_path):
    messages = [dict(m, id=m.get("id") or f"m{i}") for i, m in enumerate(CONVERSATION)]
    local = SAEMemory(encoder)
    remote = SAEMemory(_AsStoredInProcess(encoder), backend=MilvusBackend(str(tmp_path / "m.db")), candidates=len(messages))
    for memory in (local, remote):
        memory.add(messages)
        memory.delete("m3")
    for query in [QUESTION, "guitar lessons and hiking"]:
        for fusion in ("weighted", "sqrt", "rrf", "bm25"):
            for session in (None, "s3"):
                a = local.search(query, k=len(messages), fusion=fusion, session_id=session)
                b = remote.search(query, k=len(messages), fusion=fusion, session_id=session)
                assert [h.id for h in a] == [h.id for h in b]
                for x, y in zip(a, b):
                    assert (x.score, x.dense_score, x.sparse_score, x.bm25_score) == pytest.approx(
                        (y.score, y.dense_score, y.sparse_score, y.bm25_score), abs=1e-5)
                    assert [f["id"] for f in x.shared_features] == [f["id"] for f in y.shared_features]
                    assert x.to_metadata().keys() == y.to_metadata().keys()
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in m.messages()] for m in (local, remote)]
    assert untimed[0] == untimed[1]  # "time" is when each was added: a few milliseconds apart


def test_milvus_candidates_bound_the_ranking(encoder, tmp_path):
    memory = SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "m.db")), candidates=2)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=100)
    assert 2 <= len(hits) <= 6 and hits[0].id == "planted"  # at most 2 per signal, three signals
    top = {h.id for h in hits}
    outside = [m["id"] for m in memory.messages() if m["id"] not in top][:3]
    for message_id in outside:  # explain scores any message, candidate or not
        assert memory.explain(QUESTION, message_id).id == message_id


@pytest.mark.parametrize("kwargs,match", [
    ({"uri": "memory.sqlite"}, "path ending in .db"),
    ({"uri": "/no/such/folder/m.db"}, "does not exist"),
    ({"uri": 7}, "not a string"),
    ({"uri": "m.db", "collection": "has-dash"}, "collection name"),
    ({"uri": "m.db", "index": "IVF"}, "index='IVF'"),
])
def test_bad_milvus_settings_name_the_value(tmp_path, monkeypatch, kwargs, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        MilvusBackend(**kwargs)


def test_backend_options_are_not_ranking_settings(encoder):
    with pytest.raises(TypeError, match="backend=FaissBackend"):
        SAEMemory(encoder, index_type="HNSW32")


def test_milvus_refuses_a_collection_made_for_other_widths(encoder, tmp_path):
    db = str(tmp_path / "m.db")
    SAEMemory(encoder, backend=MilvusBackend(db)).add([{"content": "hello"}])
    dense_only = Encoder(EncoderConfig(sae=None), model=encoder.model)
    with pytest.raises(ValueError, match="d_sae=4096.*d_sae=0"):
        SAEMemory(dense_only, backend=MilvusBackend(db))
    memory = SAEMemory(dense_only, backend=MilvusBackend(db, "dense_only"))  # placeholder codes work
    memory.add([{"content": "Dense only, no SAE code.", "id": "d"}])
    hit = memory.search("dense", k=1)[0]
    assert hit.id == "d" and hit.sparse_score == 0.0 and hit.features == []


def test_milvus_rejects_what_it_cannot_store(encoder, tmp_path):
    memory = SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "m.db")))
    with pytest.raises(ValueError, match="65535"):
        memory.add([{"content": "word " * 14_000}])
    with pytest.raises(ValueError, match="control character"):
        memory.add([{"content": "hi", "user_id": "bell\x07"}])
    assert len(memory) == 0
    memory.add([{"content": "kept", "id": "k"}])
    with pytest.raises(ValueError, match="65535"):  # refused before the stored version is touched
        memory.update([{"id": "k", "content": "word " * 14_000}])
    assert memory.get("k")["content"] == "kept" and len(memory) == 1


def test_adapters_run_on_milvus(encoder, tmp_path):
    from langchain_saememory import SAEMemoryRetriever as LangChainRetriever
    from llama_index_saememory import SAEMemoryRetriever as LlamaIndexRetriever

    lc = LangChainRetriever.from_messages(CONVERSATION, k=2, encoder=encoder,
                                       backend=MilvusBackend(str(tmp_path / "lc.db")))
    docs = lc.invoke(QUESTION)
    assert isinstance(lc.memory.backend, MilvusBackend) and docs[0].id == "planted" and len(docs) == 2
    li = LlamaIndexRetriever.from_messages(CONVERSATION, similarity_top_k=2, encoder=encoder,
                                           backend=MilvusBackend(str(tmp_path / "li.db"), "chat"))
    nodes = li.retrieve(QUESTION)
    assert isinstance(li.memory.backend, MilvusBackend) and nodes[0].node.node_id == "planted"


def test_the_core_imports_without_pymilvus_and_says_what_to_install(encoder, monkeypatch, tmp_path):
    import subprocess
    import sys

    code = "import sys; sys.modules['pymilvus'] = None; import saememory, langchain_saememory, llama_index_saememory"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "saememory\[milvus\]"'):
        SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "m.db")))


def test_context_budget_keeps_the_best_that_fit(make):
    memory = make()
    memory.add([{"id": "long", "content": "My sister Ana moved to Lisbon last spring. " * 12},
                {"id": "short", "content": "Ana is my sister; she lives in Lisbon."},
                {"id": "other", "content": "I bought a blue bicycle for my commute."}])
    ranked = [h.id for h in memory.search("Where does my sister Ana live?", k=3)]
    # The long message cannot fit the budget wherever it ranks; the other two fit together.
    budget = len(memory.get("short")["content"]) + len(memory.get("other")["content"])
    hits = memory.search("Where does my sister Ana live?", k=3, max_chars=budget)
    assert [h.id for h in hits] == [i for i in ranked if i != "long"]
    assert [h.rank for h in hits] == [1, 2]
    assert sum(len(h.content) for h in hits) <= budget
    assert memory.search("Where does my sister Ana live?", k=3, max_chars=5) == []
    with pytest.raises(ValueError, match="max_chars"):
        memory.search("sister", max_chars=0)


def test_bm25_stems_by_default_and_old_saves_keep_no_stemming(local_memory, tmp_path, encoder):
    assert local_memory.config.bm25_stemmer == "english"
    local_memory.add([{"id": "lessons", "content": "I started taking guitar lessons on Tuesdays."}])
    stemmed = {h.id: h.bm25_score for h in local_memory.search("guitar lesson", k=len(local_memory))}
    plain = SAEMemory(encoder, bm25_stemmer=None)
    plain.add([{"id": "lessons", "content": "I started taking guitar lessons on Tuesdays."}])
    assert stemmed["lessons"] > 0 and plain.search("lesson", k=1)[0].bm25_score == 0.0
    # A memory saved before bm25_stemmer existed has neither the setting nor a stemmer on file
    # (nor checksums: it is of format 1).
    plain.save(tmp_path / "old")
    snapshot = tmp_path / "old" / (tmp_path / "old" / "CURRENT").read_text().strip()
    to_float32_format(snapshot, version=1)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    del manifest["settings"]["bm25_stemmer"]
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    vocab = json.loads((snapshot / "bm25_vocab.json").read_text())
    del vocab["stemmer"]
    (snapshot / "bm25_vocab.json").write_text(json.dumps(vocab))
    old = SAEMemory.load(tmp_path / "old", encoder=encoder)
    assert old.config.bm25_stemmer is None and old.backend.lexical.stemmer is None


def test_a_manifest_cannot_make_load_run_a_models_code(encoder, tmp_path):
    memory = SAEMemory(encoder)
    memory.add([{"content": "My sister Ana lives in Lisbon.", "user_id": "alice"}])
    memory.save(tmp_path / "m")
    evil = tmp_path / "not-a-model"  # were it loaded with trust_remote_code, its Python would run
    for edit in (lambda m: m["encoder_config"].update(model=str(evil), trust_remote_code=True),
                 lambda m: m["encoder_config"].update(trust_remote_code="yes"),
                 lambda m: m.__setitem__("encoder_config", {"type": "lm"}),  # no key: LMEncoderConfig's default, True
                 lambda m: m.__setitem__("encoder_config", {"lm": "google/gemma-2-2b"})):  # an old LM save
        memory.save(tmp_path / "m")
        snapshot = tmp_path / "m" / (tmp_path / "m" / "CURRENT").read_text()
        manifest = json.loads((snapshot / "manifest.json").read_text())
        edit(manifest)
        (snapshot / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="runs its model's own code.*trust_remote_code=True"):
            SAEMemory.load(tmp_path / "m")
    with pytest.raises(Exception) as opted_in:  # opted in, it goes on to load that model, which is not there
        SAEMemory.load(tmp_path / "m", trust_remote_code=True)
    assert "runs its model's own code" not in str(opted_in.value)
    assert SAEMemory.load(tmp_path / "m", encoder=encoder).messages("alice")  # an encoder passed in is used as is


def test_explain_explains_a_message_below_the_adaptive_cut(encoder):
    memory = SAEMemory(encoder, selection="adaptive")
    memory.add([{"content": t, "id": f"m{i}"} for i, t in enumerate([
        "My sister Ana moved to Lisbon.", "I bought a new bike.", "The weather was nice today.",
        "I started violin lessons.", "My dog is called Luna."])])
    shown = [h.id for h in memory.search("Where does my sister live?")]
    assert "m4" not in shown  # below the cut: search leaves it out, explain still ranks it
    hit = memory.explain("Where does my sister live?", "m4")
    assert hit.id == "m4" and hit.rank > len(shown)


def test_a_deleted_message_never_comes_back_through_another_memorys_save(encoder, tmp_path):
    from saememory import SAEMemory, SaveConflictError

    memory = SAEMemory(encoder)
    memory.add([{"content": "My PIN is 4821.", "id": "pin", "user_id": "alice"},
                {"content": "I like tea.", "id": "tea", "user_id": "alice"}])
    memory.save(tmp_path / "m")
    one, two = SAEMemory.load(tmp_path / "m", encoder), SAEMemory.load(tmp_path / "m", encoder)
    one.delete(["pin"], user_id="alice")
    one.save(tmp_path / "m")
    two.add([{"content": "I like coffee.", "id": "coffee", "user_id": "alice"}])
    with pytest.raises(SaveConflictError, match="SAEMemory.load"):
        two.save(tmp_path / "m")
    assert [m["id"] for m in SAEMemory.load(tmp_path / "m", encoder).messages("alice")] == ["tea"]


def test_a_milvus_save_reconnects_through_the_backend_the_caller_names(encoder, tmp_path):
    pytest.importorskip("pymilvus")
    from saememory import MilvusBackend, SAEMemory

    memory = SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "m.db"), "reconnect"))
    memory.add([{"content": "I like tea.", "id": "tea", "user_id": "alice"}])
    memory.save(tmp_path / "saved")
    memory.backend.close()
    again = SAEMemory.load(tmp_path / "saved", encoder, backend=MilvusBackend(str(tmp_path / "m.db"), "reconnect"))
    assert [m["id"] for m in again.messages("alice")] == ["tea"]
    again.backend.close()
    SAEMemory(encoder).save(tmp_path / "in-process")
    with pytest.raises(ValueError, match="only for reconnecting to a Milvus save"):
        SAEMemory.load(tmp_path / "in-process", encoder, backend=MilvusBackend(str(tmp_path / "m.db")))


def test_langchains_role_names_in_dicts_are_the_users_and_the_assistants(encoder):
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    memory.add([{"content": "I live in Leeds now.", "role": "human", "id": "h"},
                {"content": "Leeds is a lovely city.", "role": "ai", "id": "a"}])
    assert [m["role"] for m in memory.messages()] == ["user", "assistant"]
    assert [h.id for h in memory.search("Where do I live?", roles="human")] == ["h"]
    memory.update([{"id": "a", "role": "human"}])
    assert memory.get("a")["role"] == "user"
    # A save made before the aliases holds "human": a filter for either name reads it.
    from saememory.messages import role_names

    assert role_names(("user",)) == ("user", "human")
    assert role_names(("ai",)) == ("ai", "assistant", "model", "chatbot")  # LlamaIndex's names for it too
