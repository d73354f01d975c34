#!/usr/bin/env bash
# LLaVA-NeXT stage 1 (pretrain): train only the projector (and image_newline)
# on LLaVA-Pretrain 558K captions. Llama-3-8B-Instruct + CLIP-L/336, 8 GPUs.
# Edit the variables below; every check happens in Python (llava/train/train.py).
set -e
source ./scripts/common.sh   # the launcher: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT or HOSTFILE (docs/MultiNode.md)

# --- what you edit --------------------------------------------------------
LLM=./checkpoints/Meta-Llama-3-8B-Instruct  # local copy of meta-llama/Meta-Llama-3-8B-Instruct
VISION_TOWER=./checkpoints/clip-vit-large-patch14-336 # local copy of openai/clip-vit-large-patch14-336
GRID_PINPOINTS="[[336,672],[672,336],[672,672],[1008,336],[336,1008]]"  # anyres canvases, [height, width] px:
#   LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1, 1x3 tiles of 336 px (or the range form "(1x1),...,(3x3)")
# SigLIP variant (384-px tiles, 27x27 = 729 tokens each): both lines below
# VISION_TOWER=./checkpoints/siglip-so400m-patch14-384
# GRID_PINPOINTS="[[384,768],[768,384],[768,768],[1152,384],[384,1152]]"
DATA_PATH=./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json  # see docs/Data.md
IMAGE_FOLDER=./playground/data/LLaVA-Pretrain/images
OUTPUT_DIR=./checkpoints/llava-next-llama3-8b-pretrain  # rerun the same command to resume
NUM_GPUS=8                  # per node
PER_DEVICE_BATCH=8          # global batch = NNODES * NUM_GPUS * PER_DEVICE_BATCH * GRAD_ACCUM = 256 on one node
GRAD_ACCUM=4
LR=1e-3
MAX_LEN=4096
REPORT_TO=wandb             # or tensorboard, or none
# ---------------------------------------------------------------------------

launch "$NUM_GPUS" llava/train/train_mem.py \
    --deepspeed ./scripts/zero2.json \
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
    --bf16 True \
    --tf32 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 500 \
    --save_total_limit 1 \
    --learning_rate "$LR" \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --model_max_length "$MAX_LEN" \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "$REPORT_TO"
