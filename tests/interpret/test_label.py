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
    assert set(sae.phrases) <= set(sae.labels) and sae.examples
    # Relabelling replaces the Labels section only; a section after it stays, and --phrases-only
    # leaves the labels as they are.
    card_path = out / "model_card.md"
    card_path.write_text(card_path.read_text() + "\n## Label detection\n\nmeasured elsewhere\n")
    main(["--saes", str(out), "--cache-dir", corpus["cache"], "--n-check-features", "20"])
    assert card_path.read_text().count("## Labels") == 1 and "measured elsewhere" in card_path.read_text()
    labels = json.loads((out / "labels.json").read_text())
    main(["--saes", str(out), "--cache-dir", corpus["cache"], "--phrases-only"])
    again = json.loads((out / "labels.json").read_text())
    assert again["labels"] == labels["labels"] and again["examples"] == labels["examples"]
    assert again["phrases"] == labels["phrases"] and again["method"].count("Phrases:") == 1


def test_an_sae_without_a_card_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No card.json .* python -m saememory.train"):
        main(["--saes", str(tmp_path)])
