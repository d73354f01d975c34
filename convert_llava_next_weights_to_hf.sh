#!/usr/bin/env bash
# Convert a finetuned checkpoint of this project into a transformers
# LlavaNextForConditionalGeneration folder with its LlavaNextProcessor.
#   bash convert_llava_next_weights_to_hf.sh [SRC] [DST]
# Runs on CPU, offline; ends with a logit check of the converted model (docs/Conversion.md).
set -e

SRC="${1:-./checkpoints/llava-next-vicuna-7b-sft}"
DST="${2:-./checkpoints/llava-next-vicuna-7b-sft-hf}"

python -m llava.export.convert --model-path "$SRC" --output-dir "$DST"
