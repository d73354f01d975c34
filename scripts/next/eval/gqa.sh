#!/usr/bin/env bash
# GQA testdev-balanced: answers with llava.eval.model_vqa_loader (one chunk per GPU), then exact-match accuracy and the predictions file for GQA's own eval.py.
# Data layout: docs/Evaluation.md (playground/data/eval/gqa).
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
OUT=$EVAL/gqa/answers/$NAME
mkdir -p "$OUT"
for IDX in $(seq 0 $((CHUNKS - 1))); do
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} python -m llava.eval.model_vqa_loader \
        --model-path "$CKPT" \
        --question-file "$EVAL/gqa/llava_gqa_testdev_balanced.jsonl" \
        --image-folder "$EVAL/gqa/data/images" \
        --answers-file "$OUT/${CHUNKS}_${IDX}.jsonl" \
        --num-chunks "$CHUNKS" --chunk-idx "$IDX" \
        --batch-size "$BATCH" --temperature 0 --conv-mode "$CONV_MODE" &
done
wait
cat "$OUT"/${CHUNKS}_*.jsonl > "$OUT/merge.jsonl"

python -m llava.eval.score gqa \
    --annotation-file "$EVAL/gqa/data/testdev_balanced_questions.json" \
    --result-file "$OUT/merge.jsonl" \
    --predictions-file "$EVAL/gqa/data/testdev_balanced_predictions.json"
