"""saememory.train: the CLI trains loadable TopK and KronSAE SAEs with cards; resume continues a run."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from saememory import load_sae
from saememory.train import TrainConfig, main, neighbour_recall, read_corpus, train

SUBJECTS = ["My sister", "Our neighbour", "The new manager", "My old roommate", "A friend from school",
            "My dentist", "The kids", "Grandpa"]
ACTIONS = ["moved to Lisbon", "bought a red bike", "started learning piano", "booked a trip to Japan",
           "adopted a grey cat", "lost the car keys", "baked a lemon cake", "ran a marathon",
           "fixed the kitchen sink", "read a novel about whales"]
WHEN = ["last spring", "yesterday", "on Friday", "two weeks ago"]
TEXTS = [f"{s} {a} {w}." for s, a, w in itertools.product(SUBJECTS, ACTIONS, WHEN)]  # 320 messages


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny JSONL corpus and an activation cache shared by the tests of this module."""
    root = tmp_path_factory.mktemp("corpus")
    path = root / "messages.jsonl"
    path.write_text("".join(json.dumps({"role": "user", "content": t}) + "\n" for t in TEXTS))
    return {"path": str(path), "cache": str(root / "cache")}


def _tiny(corpus, out, **overrides) -> TrainConfig:
    settings = {"corpus": [corpus["path"]], "out": str(out), "d_sae": 64, "k": 4, "epochs": 2.0,
                "batch_size": 256, "holdout": 0.1, "cache_dir": corpus["cache"], "checkpoint_every": 0}
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize(
    "architecture,source,extra",
    [("topk", "residual", []), ("kronsae", "embedding", ["--m", "2", "--n", "4", "--batch-size", "64"])],
)
def test_cli_writes_a_loadable_sae_and_card(corpus, tmp_path, architecture, source, extra):
    from sae_lens import SAE

    out = tmp_path / architecture
    main(["--corpus", corpus["path"], "--out", str(out), "--source", source, "--architecture", architecture,
          "--d-sae", "64", "--k", "4", "--epochs", "2", "--cache-dir", corpus["cache"], *extra])
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == architecture and card["d_sae"] == 64
    assert card["data"]["unique_messages"] == len(TEXTS)
    assert 0.0 < card["heldout"]["l0"] <= 4 and -1.0 < card["heldout"]["explained_variance"] < 1.0
    assert (out / "model_card.md").is_file() and not (out / "checkpoint").exists()
    ours = load_sae(out)
    theirs = SAE.load_from_disk(str(out))
    x = torch.randn(8, 384)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-5)
    if architecture == "kronsae":
        assert card["kronsae"] == {"h": 8, "m": 2, "n": 4}
        assert card["encoder_flops_per_vector"] == 384 * 8 * 6
        assert 0.0 <= card["heldout"]["neighbour_recall_at_10"] <= 1.0
        assert ours.cfg.hook_name == "sentence_embedding"
    else:
        assert ours.cfg.hook_name == "hidden_states.4"


def test_resume_ends_where_an_uninterrupted_run_ends(corpus, tmp_path, monkeypatch):
    import saememory.train as train_module

    full = train(_tiny(corpus, tmp_path / "full"))
    original = train_module.batches

    def crashing(*args, **kwargs):
        for i, batch in enumerate(original(*args, **kwargs)):
            if i == 7:
                raise RuntimeError("simulated crash")
            yield batch

    cfg = _tiny(corpus, tmp_path / "resumed", checkpoint_every=3)
    monkeypatch.setattr(train_module, "batches", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoint").iterdir() if p.is_dir()] == ["6"]
    monkeypatch.setattr(train_module, "batches", original)
    with pytest.raises(ValueError, match="lr"):
        train(_tiny(corpus, tmp_path / "resumed", checkpoint_every=3, resume=True, lr=5e-3))
    resumed = train(_tiny(corpus, tmp_path / "resumed", checkpoint_every=3, resume=True))
    card = json.loads((resumed / "card.json").read_text())
    assert card["training"]["resumed_from_step"] == 6
    assert card["training"]["steps"] > 7
    expected, got = load_file(str(full / "sae_weights.safetensors")), load_file(str(resumed / "sae_weights.safetensors"))
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key


def test_resume_without_checkpoint_says_so(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_tiny(corpus, tmp_path / "none", resume=True))


def test_config_rules():
    with pytest.raises(ValueError, match="h \\* m \\* n, but h=6, m=2, n=8"):
        TrainConfig(corpus=["x"], out="y", architecture="kronsae", d_sae=100, m=2, n=8)
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(corpus=["x"], out="y", architecture="gated")
    cfg = TrainConfig(corpus=["x"], out="y", architecture="kronsae", d_sae=64, m=2, n=4)
    assert cfg.h == 8 and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_neighbour_recall_is_one_for_a_perfect_reconstruction():
    class Identity:
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    dense = torch.randn(50, 16)
    assert neighbour_recall(Identity(), dense) == 1.0


def test_read_corpus_reads_longmemeval_json_through_the_eval_reader(tmp_path):
    question = {"question_id": "q1", "haystack_session_ids": ["s1"], "haystack_dates": ["2024-01-01"],
                "answer_session_ids": ["s1"], "haystack_sessions": [[
                    {"role": "user", "content": "My sister moved to Lisbon."},
                    {"role": "assistant", "content": "Lovely city!"},
                    {"role": "user", "content": "  "}]]}
    (tmp_path / "lme.json").write_text(json.dumps([question]))
    assert read_corpus([str(tmp_path / "lme.json")]) == ["My sister moved to Lisbon.", "Lovely city!"]
    (tmp_path / "other.json").write_text(json.dumps([{"text": "not LongMemEval"}]))
    with pytest.raises(ValueError, match="not a LongMemEval file"):
        read_corpus([str(tmp_path / "other.json")])
