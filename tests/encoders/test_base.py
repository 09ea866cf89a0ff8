"""saememory.encoders.base: the protocol, and the registry that saves and rebuilds an encoder by its config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from saememory import Encoder, EncoderConfig
from saememory.encoders import EncoderProtocol, encoder_config, encoder_from_config


def test_the_default_encoder_meets_the_protocol(encoder):
    assert isinstance(encoder, EncoderProtocol)
    assert not isinstance(object(), EncoderProtocol)


def test_a_saved_config_rebuilds_the_encoder(encoder):
    saved = encoder_config(encoder)
    assert saved == {"type": "sentence-transformer", **encoder.config.to_dict()}
    rebuilt = encoder_from_config(saved)
    assert type(rebuilt) is Encoder and rebuilt.config == encoder.config
    assert rebuilt.identity() == encoder.identity()


def test_a_config_saved_before_types_is_read_by_its_keys(encoder):
    dense_only = encoder_from_config(EncoderConfig(sae=None).to_dict())
    assert type(dense_only) is Encoder and dense_only.sae is None
    # Routing is visible in which config refuses an unknown key: the LM encoder's for an "lm" key.
    with pytest.raises(ValueError, match="Unknown LM encoder settings"):
        encoder_from_config({"lm": "google/gemma-2b-it", "bogus": 1})
    with pytest.raises(ValueError, match="Unknown encoder settings"):
        encoder_from_config({"model": "all-MiniLM-L6-v2", "bogus": 1})


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(ValueError, match="'word2vec' is not one of .*pass the encoder itself"):
        encoder_from_config({"type": "word2vec"})


def test_a_custom_encoder_saves_no_config(encoder):
    class Custom:
        config = encoder.config  # a config alone does not make it rebuildable

    assert encoder_config(Custom()) is None
    assert encoder_config(object()) is None


def test_light_modules_load_without_torch():
    code = (
        "import sys; import saememory, saememory.encoders, saememory.eval.longmemeval, saememory.interpret.labels, "
        "saememory.interpret.families, saememory.interpret.steering, saememory.scoring, saememory.messages; "
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'sae_lens'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_identity_hint_names_every_setting_to_pass_and_when_rebuilding_works():
    from saememory.encoders.base import identity_hint

    old = {"model": "m", "sae": {"name": "s"}}  # saved before split and hygiene existed
    now = {**old, "split": "sentences", "sae_hygiene": "h1"}
    hint = identity_hint(old, now, saved_config={"model": "m"})
    assert "EncoderConfig(split='none', hygiene=False)" in hint and "no encoder at all" in hint
    assert "quantize" not in hint
    # Saved with hygiene on while the SAE hid nothing: rebuilding now would hide features.
    nothing_hidden = {k: v for k, v in now.items() if k != "sae_hygiene"}
    hint = identity_hint(nothing_hidden, now, saved_config={"hygiene": True})
    assert "EncoderConfig(hygiene=False)" in hint and "no encoder at all" not in hint
    # Saved with features hidden, none hidden now although hygiene is on: the file went missing.
    missing = identity_hint(now, nothing_hidden, {"hygiene": True}, type("Config", (), {"hygiene": True})())
    assert "hides no feature now" in missing and "EncoderConfig(" not in missing
    assert "EncoderConfig(hygiene=True)" in identity_hint(now, nothing_hidden, {"hygiene": True},
                                                         type("Config", (), {"hygiene": False})())
    changed = identity_hint(now, {**now, "sae_hygiene": "h2"}, {"hygiene": True})
    assert "hides other features" in changed and "no encoder" not in changed
    int8 = identity_hint({**now, "quantized": "int8"}, now)
    assert "EncoderConfig(quantize=True)" in int8 and "runtime='torch'" in int8 and "no encoder" not in int8
    assert identity_hint(now, now) == ""
