"""The HTML picture of a query, by function and by the saememory command."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from saememory import SAEMemory, format_hit
from saememory.cli import main as saememory_command
from saememory.interpret.html import hits_html, write_html
from tests.helpers import CONVERSATION, QUESTION


def test_the_page_highlights_matched_words_and_escapes_every_text(encoder, tmp_path):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION + [{"content": "<script>alert('x')</script> my guitar teacher", "session_id": "<b>s</b>"}])
    hits = memory.search(QUESTION, k=len(memory), words=True)
    page = hits_html("<img src=x onerror=alert(1)>", hits)
    assert "<script>" not in page and "<img src=x" not in page and "<b>s</b>" not in page
    unmarked = re.sub(r"<mark [^>]*>|</mark>", "", page)  # a matched word inside the tag may be marked
    assert "&lt;script&gt;" in unmarked and page.count("class='hit'") == len(hits)
    first = hits[0]
    assert first.matched_words and f"<mark title=" in page
    assert f"{first.words_share:.0%} of the SAE score" in page
    path = write_html(tmp_path / "view.html", QUESTION, hits)
    assert path.read_text(encoding="utf-8") == hits_html(QUESTION, hits)
    assert "No message matched." in hits_html(QUESTION, [])
    with_examples = hits_html(QUESTION, hits, sae=encoder.sae)  # hover a feature: where it fires most
    shown = [f["id"] for f in first.matched_words[0]["features"]]
    assert "Fires most on: " in with_examples and "Fires most on: " not in page
    assert any(html.escape(encoder.sae.examples[f][0], quote=True)[:20] in with_examples for f in shown)


def test_the_command_explains_a_saved_memory(encoder, tmp_path, capsys):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION, user_id="alice")
    memory.save(tmp_path / "memory")
    out = tmp_path / "why.html"
    assert saememory_command(["explain", str(tmp_path / "memory"), QUESTION, "--user", "alice", "--k", "2",
                              "--out", str(out)]) == 0
    assert "2 hits explained" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8").count("class='hit'") == 2
    for who in ([], ["--user", "mallory"], ["--user", "alice", "--session", "no-such-session"]):
        with pytest.raises(SystemExit):  # an empty page would look like an answer
            saememory_command(["explain", str(tmp_path / "memory"), QUESTION, "--out", str(tmp_path / "x.html"), *who])
        assert "holds no messages of" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    with pytest.raises(SystemExit):
        saememory_command(["explain", str(tmp_path / "nowhere"), QUESTION])
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        saememory_command(["explain", str(tmp_path / "memory"), "  "])
    assert "query" in capsys.readouterr().err
    for out, says in ((tmp_path, "is a folder"), (tmp_path / "no" / "such" / "why.html", "does not exist")):
        with pytest.raises(SystemExit):  # told before the model loads, not as a traceback after the search
            saememory_command(["explain", str(tmp_path / "memory"), QUESTION, "--user", "alice", "--out", str(out)])
        assert says in capsys.readouterr().err
    snapshot = tmp_path / "memory" / (tmp_path / "memory" / "CURRENT").read_text()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["encoder_config"]["trust_remote_code"] = True  # an edited folder: loading would run a model's code
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit):
        saememory_command(["explain", str(tmp_path / "memory"), QUESTION, "--user", "alice"])
    assert "--trust-remote-code" in capsys.readouterr().err


def test_the_command_reconnects_a_milvus_save_where_it_is_told(encoder, tmp_path, capsys):
    pytest.importorskip("pymilvus")
    from saememory import MilvusBackend

    memory = SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "old.db"), "cli"))
    memory.add(CONVERSATION, user_id="alice")
    memory.save(tmp_path / "memory")
    memory.backend.close()
    shutil.copytree(tmp_path / "old.db", tmp_path / "new.db")  # moved (copied: milvus-lite locks the open original)
    out = tmp_path / "why.html"
    assert saememory_command(["explain", str(tmp_path / "memory"), QUESTION, "--user", "alice", "--out", str(out),
                              "--milvus-uri", str(tmp_path / "new.db")]) == 0
    assert "hits explained" in capsys.readouterr().out
    SAEMemory(encoder).save(tmp_path / "in-process")
    with pytest.raises(SystemExit):
        saememory_command(["explain", str(tmp_path / "in-process"), QUESTION, "--milvus-uri", str(tmp_path / "new.db")])
    assert "only for a Milvus save" in capsys.readouterr().err


def test_hostile_labels_phrases_and_examples_stay_text(encoder, tmp_path):
    """An SAE's label files may be a user's own: nothing in them becomes markup, a newline or a crash."""
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=2, words=True)
    evil = "x' onmouseover='alert(1)' a=\"<script>alert(2)</script>\nstrongest: #1 \x1b[31mFAKE"
    for hit in hits:
        for feature in hit.shared_features + [f for pair in hit.matched_words for f in pair["features"]]:
            feature["label"], feature["phrase"] = evil, evil
    sae = type("SAE", (), {"examples": {f["id"]: [evil] * 5 for pair in hits[0].matched_words for f in pair["features"]}})()
    page = hits_html(QUESTION, hits, sae=sae)
    assert "<script>" not in page and "onmouseover='" not in page and "&lt;script&gt;" in page
    tips = re.findall(r"title='Fires most on: ([^']*)'", page)
    assert tips and all(tip.count(" | ") == 2 for tip in tips)  # three examples of five at most
    text = format_hit(hits[0].content, hits[0].to_metadata())
    assert "\x1b" not in text  # a terminal shows the escape as text, not as a colour
    meta = hits[0].to_metadata()
    assert format_hit("a\nb\x1b[31m", meta).count("\n") == format_hit("ab", meta).count("\n")  # the message too
    assert "\x1b" not in format_hit("a\nb\x1b[31m", meta)
    assert text.count("\n") == format_hit(hits[0].content, {**hits[0].to_metadata(), "shared_features": [],
                                                               "matched_words": [], "features": []}).count("\n") + 3

