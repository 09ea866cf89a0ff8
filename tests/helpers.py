"""Hand-made conversations and builders for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# One user's history over three sessions: one planted fact among everyday distractors.
PLANTED = "By the way, my sister Ana moved to Lisbon last spring and loves it there."
DISTRACTORS = [
    "Can you suggest a recipe for a quick weeknight pasta?",
    "I need to renew my car insurance before the end of the month.",
    "What are some good stretches after a long run?",
    "My laptop keeps freezing when I open too many browser tabs.",
    "I'm thinking of repainting the kitchen a pale green.",
    "How long should I steep green tea?",
    "I started learning the guitar two weeks ago.",
    "Remind me to water the tomato plants on Thursday.",
    "What's the difference between a Roth IRA and a traditional IRA?",
    "Our team meeting got moved to Friday afternoon.",
    "I watched a documentary about octopuses last night.",
    "Do you know any good podcasts about history?",
    "I'm allergic to peanuts, so I avoid Thai takeout.",
    "My bike chain keeps slipping on steep hills.",
    "The printer at work only prints in black and white now.",
    "I want to plan a weekend hiking trip in the mountains.",
    "Which houseplants survive in low light?",
    "I finally finished reading that long fantasy novel.",
]
CONVERSATION = (
    [{"role": "user", "content": t, "session_id": "s1", "timestamp": "2024-03-01"} for t in DISTRACTORS[:6]]
    + [{"role": "user", "content": PLANTED, "session_id": "s2", "timestamp": "2024-04-12", "id": "planted"}]
    + [{"role": "assistant", "content": "That sounds lovely! Lisbon is a beautiful city.", "session_id": "s2"}]
    + [{"role": "user", "content": t, "session_id": "s3", "timestamp": "2024-05-20"} for t in DISTRACTORS[6:]]
)
QUESTION = "Which city does my sister live in now?"


def save_sae_lens_sae(path: Path, architecture: str, d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0) -> Path:
    """Saves a random sae-lens SAE of the given architecture in sae-lens' own format."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
    elif architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)  # decoder norms away from 1, so rescaling matters
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.5)
    sae.cfg.metadata.hook_name = "sentence_embedding"
    sae.save_model(path)  # sae-lens' own writer: cfg.json + sae_weights.safetensors
    return path


def load_script(path: Path):
    """Imports a script (an example or a benchmark) by path, registered in sys.modules as its dataclasses need."""
    name = f"_lme_script_{path.parent.name}_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
