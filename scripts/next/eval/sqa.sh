#!/usr/bin/env bash
# ScienceQA test: answers with llava.eval.model_vqa_science (one chunk per GPU), then accuracy and IMG accuracy.
# Data layout: docs/Evaluation.md (playground/data/eval/scienceqa).
set -e

# --- what you edit ---------------------------------------------------------
CKPT=${CKPT:-./checkpoints/llava-next-vicuna-7b-sft}   # our checkpoint, or a LLaVA / LLaVA-NeXT one
CONV_MODE=${CONV_MODE:-vicuna_v1}                        # the template it was finetuned with
BATCH=${BATCH:-8}                                        # questions per generate call (same answers as 1)
EVAL=${EVAL:-./playground/data/eval}
GPUS=${CUDA_VISIBLE_DEVICES:-0}
# ---------------------------------------------------------------------------

NAME=$(basename "$CKPT")
IFS=',' read -ra GPULIST <<< "$GPUS"
CHUNKS=${#GPULIST[@]}
OUT=$EVAL/scienceqa/answers/$NAME
mkdir -p "$OUT"
for IDX in $(seq 0 $((CHUNKS - 1))); do
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} python -m llava.eval.model_vqa_science \
        --model-path "$CKPT" \
        --question-file "$EVAL/scienceqa/llava_test_CQM-A.json" \
        --image-folder "$EVAL/scienceqa/images/test" \
        --answers-file "$OUT/${CHUNKS}_${IDX}.jsonl" \
        --num-chunks "$CHUNKS" --chunk-idx "$IDX" \
        --single-pred-prompt \
        --batch-size "$BATCH" --temperature 0 --conv-mode "$CONV_MODE" &
done
wait
cat "$OUT"/${CHUNKS}_*.jsonl > "$OUT/merge.jsonl"

python -m llava.eval.score sqa \
    --base-dir "$EVAL/scienceqa" \
    --result-file "$OUT/merge.jsonl" \
    --split test
