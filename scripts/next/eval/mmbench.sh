#!/usr/bin/env bash
# MMBench (or CCBench / MMBench-CN): circular answers with llava.eval.model_vqa_mmbench (one chunk per GPU),
# then dev accuracy (when the TSV has answers) and the submission TSV for the test split.
# Data layout: docs/Evaluation.md (playground/data/eval/mmbench).
set -e

# --- what you edit ---------------------------------------------------------
CKPT=${CKPT:-./checkpoints/llava-next-vicuna-7b-sft}   # our checkpoint, or a LLaVA / LLaVA-NeXT one
CONV_MODE=${CONV_MODE:-vicuna_v1}                        # the template it was finetuned with
SPLIT=${SPLIT:-mmbench_dev_20230712}                     # the TSV's name, without .tsv
LANG_FLAG=${LANG_FLAG:-en}                               # cn for MMBench-CN / CCBench
BATCH=${BATCH:-8}                                        # questions per generate call (same answers as 1)
EVAL=${EVAL:-./playground/data/eval}
GPUS=${CUDA_VISIBLE_DEVICES:-0}
# ---------------------------------------------------------------------------

NAME=$(basename "$CKPT")
IFS=',' read -ra GPULIST <<< "$GPUS"
CHUNKS=${#GPULIST[@]}
OUT=$EVAL/mmbench/answers/$SPLIT/$NAME
mkdir -p "$OUT"
for IDX in $(seq 0 $((CHUNKS - 1))); do
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} python -m llava.eval.model_vqa_mmbench \
        --model-path "$CKPT" \
        --question-file "$EVAL/mmbench/$SPLIT.tsv" \
        --answers-file "$OUT/${CHUNKS}_${IDX}.jsonl" \
        --num-chunks "$CHUNKS" --chunk-idx "$IDX" \
        --all-rounds --single-pred-prompt --lang "$LANG_FLAG" \
        --batch-size "$BATCH" --temperature 0 --conv-mode "$CONV_MODE" &
done
wait
cat "$OUT"/${CHUNKS}_*.jsonl > "$OUT/merge.jsonl"

python -m llava.eval.score mmbench \
    --question-file "$EVAL/mmbench/$SPLIT.tsv" \
    --result-file "$OUT/merge.jsonl" \
    --submission-file "$EVAL/mmbench/answers_upload/$SPLIT/$NAME.tsv"
