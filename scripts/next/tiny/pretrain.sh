#!/usr/bin/env bash
# The quick start's stage 1 (pretrain), on CPU: the same launch as
# scripts/next/vicuna-7b/pretrain.sh at tiny size. demo.sh prepares $WORK first
# (python -m llava.demo.prepare --work $WORK). Checks happen in Python.
set -e
source ./scripts/common.sh   # the launcher: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT or HOSTFILE (docs/MultiNode.md)

# --- what you edit (demo.sh passes WORK) -----------------------------------
WORK=${WORK:-./demo_runs/tiny}
LLM=$WORK/base/llm                  # tiny random Llama + the real Llama-2 tokenizer
VISION_TOWER=$WORK/base/clip        # tiny random CLIP, 56-px tiles
GRID_PINPOINTS="[[56,112],[112,56],[112,112],[168,56],[56,168]]"  # LLaVA-NeXT's 5 grids for 56-px tiles
DATA_PATH=$WORK/data/pretrain.json  # "A <colour> shape." captions
IMAGE_FOLDER=$WORK/data/images
OUTPUT_DIR=$WORK/pretrain
NPROC_PER_NODE=${NPROC_PER_NODE:-1}   # CPU processes per node (gloo when more than one in all)
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-8}
GRAD_ACCUM=1
LR=${LR:-1e-3}
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:--1}                  # > 0 overrides EPOCHS
SAVE_STRATEGY=${SAVE_STRATEGY:-no}    # steps: a checkpoint every SAVE_STEPS (rerun resumes from it)
SAVE_STEPS=${SAVE_STEPS:-500}
MAX_LEN=512
REPORT_TO=none
BF16=${BF16:-True}                   # bf16 autocast: ~2x faster on CPUs with AVX512-BF16/AMX; False elsewhere
# ---------------------------------------------------------------------------

launch_cpu "$NPROC_PER_NODE" llava/train/train_mem.py \
    --use_cpu True \
    --model_name_or_path "$LLM" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres \
    --mm_patch_merge_type spatial_unpad \
    --image_grid_pinpoints "$GRID_PINPOINTS" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs "$EPOCHS" \
    --max_steps "$MAX_STEPS" \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --eval_strategy no \
    --save_strategy "$SAVE_STRATEGY" \
    --save_steps "$SAVE_STEPS" \
    --learning_rate "$LR" \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 10 \
    --model_max_length "$MAX_LEN" \
    --dataloader_num_workers 0 \
    --lazy_preprocess True \
    --seed 0 \
    --bf16 "$BF16" \
    --report_to "$REPORT_TO"
