"""saememory.sae: torch inference equals sae-lens' own encode; labels load; bad files fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from saememory import list_bundled_saes, load_labels, load_sae
from saememory.encoders.sentence_transformer import BUNDLED_SAE_DIR
from saememory.sae import SAEConfig, SparseAutoencoder
from tests.helpers import save_sae_lens_sae


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu"])
def test_encode_equals_sae_lens(tmp_path, architecture):
    from sae_lens import SAE

    path = save_sae_lens_sae(tmp_path / architecture, architecture)
    ours = SparseAutoencoder.from_disk(path)
    theirs = SAE.load_from_disk(str(path))
    x = torch.randn(50, 16)
    with torch.no_grad():
        expected = theirs.encode(x)
        assert torch.allclose(ours.encode(x), expected, atol=1e-5)
        assert torch.allclose(ours.decode(expected), theirs.decode(expected), atol=1e-5)
    assert (expected > 0).any()  # the comparison is not between two zero tensors


@pytest.mark.parametrize("name", ["minilm-l4-res-topk4k", "minilm-emb-topk4k"])
def test_bundled_sae_equals_sae_lens(name):
    from sae_lens import SAE

    ours = load_sae(name)
    theirs = SAE.load_from_disk(str(BUNDLED_SAE_DIR / name))
    x = torch.randn(64, ours.cfg.d_in)
    with torch.no_grad():
        expected = theirs.encode(x)
    assert torch.allclose(ours.encode(x), expected, atol=1e-4)
    assert int((expected[0] > 0).sum()) == ours.cfg.k


def test_bundled_saes_have_model_cards():
    assert set(list_bundled_saes()) >= {"minilm-l4-res-topk4k", "minilm-emb-topk4k"}
    for name in list_bundled_saes():
        card = json.loads((BUNDLED_SAE_DIR / name / "card.json").read_text())
        for key in ("d_sae", "k", "hook_name", "data"):
            assert key in card
        for key in ("explained_variance", "l0", "dead_fraction"):
            assert key in card["heldout"]
        assert card["heldout"]["explained_variance"] > 0.5
        assert (BUNDLED_SAE_DIR / name / "model_card.md").is_file()


def test_missing_weights_file_names_it(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "architecture": "topk", "k": 2}))
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        SparseAutoencoder.from_disk(tmp_path)


def test_unknown_bundled_name_lists_the_bundled_ones():
    with pytest.raises(ValueError, match="minilm-l4-res-topk4k"):
        load_sae("no-such-sae")


def test_wrong_weight_shape_is_reported():
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2)
    weights = {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 5), "b_dec": torch.zeros(4)}
    with pytest.raises(ValueError, match="W_dec"):
        SparseAutoencoder(cfg, weights)


def test_config_rules():
    with pytest.raises(ValueError, match="k="):
        SAEConfig(d_in=4, d_sae=8, architecture="topk", k=0)
    with pytest.raises(ValueError, match="not supported"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(ValueError, match="normalize_activations"):
        SAEConfig(d_in=4, d_sae=8, architecture="standard", normalize_activations="layer_norm")
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, metadata={"hook_name": "hidden_states.3"})
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


def test_labels_in_both_layouts(tmp_path):
    ours = tmp_path / "labels.json"
    ours.write_text(json.dumps({"labels": {"3": "air travel", "7": "pets"}}))
    assert load_labels(ours) == {3: "air travel", 7: "pets"}
    neuronpedia = tmp_path / "np.json"
    neuronpedia.write_text(json.dumps([
        {"modelId": "gemma-2b", "layer": "12-res-jb", "index": "5", "description": "cooking verbs"},
        {"index": 5, "description": "a second explanation"},
        {"index": 9, "description": " dates and times "},
    ]))
    assert load_labels(neuronpedia) == {5: "cooking verbs", 9: "dates and times"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"description": "no index"}]))
    with pytest.raises(ValueError, match="index"):
        load_labels(bad)


def test_labels_json_beside_weights_is_loaded(tmp_path):
    path = save_sae_lens_sae(tmp_path / "sae", "topk")
    (path / "labels.json").write_text(json.dumps({"labels": {"1": "weather"}}))
    assert SparseAutoencoder.from_disk(path).label(1) == "weather"


@pytest.mark.parametrize("phrases", [["not", "a mapping"], {"x": "not an id"}, {"1": 5}, {"99999": "out of range"}])
def test_phrases_and_examples_load_and_malformed_ones_only_warn(tmp_path, caplog, phrases):
    path = save_sae_lens_sae(tmp_path / "sae", "topk")
    good = {"labels": {"1": "weather / rain"}, "phrases": {"1": "heavy rain"}, "examples": {"1": ["The [rain] came."]}}
    (path / "labels.json").write_text(json.dumps(good))
    sae = SparseAutoencoder.from_disk(path)
    assert sae.phrase(1) == "heavy rain" and sae.phrase(2) is None and sae.examples == {1: ["The [rain] came."]}
    (path / "labels.json").write_text(json.dumps({**good, "phrases": phrases}))
    with caplog.at_level("WARNING"):
        sae = SparseAutoencoder.from_disk(path)  # the SAE and its labels still load
    assert sae.label(1) == "weather / rain" and sae.phrases == {} and sae.examples == {1: ["The [rain] came."]}
    assert "phrases of" in caplog.text and "not attached" in caplog.text


def test_families_beside_weights_are_loaded_and_checked(tmp_path, caplog):
    path = save_sae_lens_sae(tmp_path / "sae", "topk")
    sha = SparseAutoencoder.from_disk(path).sha256
    families = {
        "format": "saememory-families/1",
        "sae_sha256": sha,
        "features": {
            "1": {"parent": None, "children": [2, 3], "root": 1, "depth": 0},
            "2": {"parent": 1, "children": [], "root": 1, "depth": 1},
            "3": {"parent": 1, "children": [], "root": 1, "depth": 1},
        },
    }
    (path / "families.json").write_text(json.dumps(families))
    (path / "labels.json").write_text(json.dumps({"labels": {"1": "travel", "2": "flights"}}))
    sae = SparseAutoencoder.from_disk(path)
    assert sae.family(2) == {"root": 1, "root_label": "travel", "parent": 1, "parent_label": "travel", "depth": 1, "size": 3}
    assert sae.family(9) is None
    families["sae_sha256"] = "0" * 64  # made for other weights: warned about, not attached
    (path / "families.json").write_text(json.dumps(families))
    with caplog.at_level("WARNING"):
        stale = SparseAutoencoder.from_disk(path)
    assert stale.families == {} and stale.family(2) is None
    assert "rerun python -m saememory.interpret.label" in caplog.text
