#!/usr/bin/env bash
# The quick start: the whole pipeline on CPU in minutes, no download, no GPU.
#   1. tiny random "pretrained" LLM (real Llama-2 tokenizer) and CLIP tower
#   2. a synthetic task that needs the image: "What colour is the shape?" (6 answers)
#   3. pretrain, then finetune, through train.py (pretrain.sh, finetune.sh here)
#   4. convert to transformers (convert_llava_next_weights_to_hf.sh, with its logit check)
#   5. transformers generate on held-out images, and on blank ones
# The last line is: demo: accuracy=... blind_accuracy=... chance=...
set -e
cd "$(dirname "$0")/../../.."   # the repository root: the scripts use paths relative to it

export WORK=${WORK:-./demo_runs/tiny}
export HF_HUB_OFFLINE=1         # nothing here needs the network

rm -rf "$WORK/base" "$WORK/data" "$WORK/pretrain" "$WORK/finetune" "$WORK/finetune-hf"
echo "== 1-2. tiny models and synthetic data in $WORK"
python -m llava.demo.prepare --work "$WORK"
echo "== 3a. pretrain (projector only)"
bash scripts/next/tiny/pretrain.sh
echo "== 3b. finetune (LLM, projector, vision tower)"
bash scripts/next/tiny/finetune.sh
echo "== 4. convert to transformers"
bash convert_llava_next_weights_to_hf.sh "$WORK/finetune" "$WORK/finetune-hf"
echo "== 5. evaluate the converted model with transformers generate"
python -m llava.demo.evaluate --model-path "$WORK/finetune-hf" --data "$WORK/data"
