#!/usr/bin/env bash
# Re-trains the SAEs shipped in shared/saememory/saes/ from ../shared/data/chat_corpus.
# Same 60k de-duplicated messages (seed 0) for both; 5% held out; activations are collected once
# and cached in .cache/activations (about 13 minutes the first time). Training settings beyond the
# flags below are TrainConfig's defaults: b_dec from the data mean, 5% warm-up, cosine decay to lr/10,
# TopK auxiliary loss 1.0, dead-feature window max(50, steps/10), seed 0.
# Training took about 25 + 15 minutes on 2 shared CPU cores (see each card's train_seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=../shared/data/chat_corpus/sgd_topicalchat_turns.jsonl.gz
OUT=shared/saememory/saes
export HF_HUB_OFFLINE=1
python -m saememory.train --corpus "$CORPUS" --out "$OUT/minilm-l4-res-topk4k" \
  --source residual --layer 4 --d-sae 4096 --k 32 --max-texts 60000 --epochs 1 --batch-size 1024 --lr 4e-3 \
  --notes "Residual source: token states after layer 4 of 6 of all-MiniLM-L6-v2 ([CLS], [SEP] and padding dropped), read from the same forward pass as the dense embedding. Encoded per token, max-pooled per message, L2-normalised. Trained only on Schema-Guided Dialogue and Topical-Chat turns (no LongMemEval text)."
python -m saememory.train --corpus "$CORPUS" --out "$OUT/minilm-emb-topk2k" \
  --source embedding --layer 4 --d-sae 2048 --k 32 --max-texts 60000 --epochs 20 --batch-size 1024 --lr 4e-3 \
  --notes "Embedding source: the normalised all-MiniLM-L6-v2 sentence embedding (as in O'Neill et al. 2024). Trained only on Schema-Guided Dialogue and Topical-Chat turns (no LongMemEval text)."
