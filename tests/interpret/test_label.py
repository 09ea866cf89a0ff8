"""saememory.interpret.label: the shipped command labels an SAE that saememory.train made, from its card."""

from __future__ import annotations

import json

import pytest

from saememory import load_sae
from saememory.interpret.label import main
from saememory.train import train
from tests.test_train import _tiny, corpus  # noqa: F401  (corpus is a fixture)


def test_command_labels_checks_and_groups_a_trained_sae(corpus, tmp_path):  # noqa: F811
    out = train(_tiny(corpus, tmp_path / "sae"))
    main(["--saes", str(out), "--cache-dir", corpus["cache"], "--n-check-features", "20"])
    card = json.loads((out / "card.json").read_text())
    section = card["labels"]
    assert section["source"] == "residual" and section["labelled_features"] > 0
    assert 0 <= section["check"]["pass_rate"] <= 1
    assert "## Labels" in (out / "model_card.md").read_text()
    sae = load_sae(out)  # the new files fit the weights, so they are attached
    assert sae.labels and len(sae.labels) == section["labelled_features"]
    assert sae.families and set(sae.families) >= set(sae.labels)


def test_an_sae_without_a_card_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No card.json .* python -m saememory.train"):
        main(["--saes", str(tmp_path)])
