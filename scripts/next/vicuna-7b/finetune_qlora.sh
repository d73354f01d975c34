#!/usr/bin/env bash
# LLaVA-NeXT stage 2 with QLoRA on ONE GPU (fits a 20 GB card): the LLM is
# loaded in 4-bit NF4 and frozen, LoRA adapters (r=128) and the projector train,
# the vision tower stays frozen. Vicuna-7B v1.5 + CLIP-L/336, template v1.
# Needs bitsandbytes and a CUDA GPU (on CPU, train.py stops with a clear error).
# Merge afterwards: python scripts/merge_lora_weights.py --model-path $OUTPUT_DIR --model-base $LLM --save-model-path ...
set -e
source ./scripts/common.sh   # the launcher: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT or HOSTFILE (docs/MultiNode.md)

# --- what you edit --------------------------------------------------------
LLM=./checkpoints/vicuna-7b-v1.5                     # local copy of lmsys/vicuna-7b-v1.5
VISION_TOWER=./checkpoints/clip-vit-large-patch14-336 # local copy of openai/clip-vit-large-patch14-336
GRID_PINPOINTS="[[336,672],[672,336],[672,672],[1008,336],[336,1008]]"  # anyres canvases, [height, width] px:
#   LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1, 1x3 tiles of 336 px (or the range form "(1x1),...,(3x3)")
PRETRAIN_DIR=./checkpoints/llava-next-vicuna-7b-pretrain  # OUTPUT_DIR of pretrain.sh
DATA_PATH=./playground/data/llava_v1_5_mix665k.json
IMAGE_FOLDER=./playground/data
OUTPUT_DIR=./checkpoints/llava-next-vicuna-7b-qlora
NUM_GPUS=1                  # per node
PER_DEVICE_BATCH=4          # global batch = NNODES * NUM_GPUS * PER_DEVICE_BATCH * GRAD_ACCUM = 128 on one node
GRAD_ACCUM=32               # out of memory? halve PER_DEVICE_BATCH and double this
LR=2e-4                     # LoRA adapters
PROJECTOR_LR=2e-5
LORA_R=128
LORA_ALPHA=256
MAX_LEN=4096
REPORT_TO=wandb             # or tensorboard, or none
# ---------------------------------------------------------------------------

launch "$NUM_GPUS" llava/train/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --lora_enable True --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" \
    --bits 4 --double_quant True --quant_type nf4 \
    --mm_projector_lr "$PROJECTOR_LR" \
    --model_name_or_path "$LLM" \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_DIR/mm_projector.bin" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres \
    --mm_patch_merge_type spatial_unpad \
    --image_grid_pinpoints "$GRID_PINPOINTS" \
    --group_by_modality_length True \
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
