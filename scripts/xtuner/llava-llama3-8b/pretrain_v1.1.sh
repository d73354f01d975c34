#!/usr/bin/env bash
# XTuner's LLaVA-Llama-3-8B-v1.1, stage 1 (pretrain): train the projector only,
# LLM and CLIP tower frozen, on ShareGPT4V's 1246K share-captioner captions. 8 GPUs.
# Every value is XTuner's, cited from
#   xtuner/configs/llava/llama3_8b_instruct_clip_vit_large_p14_336/pretrain/
#   llava_llama3_8b_instruct_clip_vit_large_p14_336_e1_gpu8_sharegpt4v_pretrain.py   ("config" below)
# launched as in its README: NPROC_PER_NODE=8 xtuner train ... --deepspeed deepspeed_zero2 --seed 1024.
# Edit the variables below; every check happens in Python (llava/train/train.py).
set -e
source ./scripts/common.sh   # the launcher: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT or HOSTFILE (docs/MultiNode.md)

# --- what you edit --------------------------------------------------------
LLM=./checkpoints/Meta-Llama-3-8B-Instruct             # config: llm_name_or_path meta-llama/Meta-Llama-3-8B-Instruct
VISION_TOWER=./checkpoints/clip-vit-large-patch14-336  # config: visual_encoder_name_or_path openai/clip-vit-large-patch14-336
DATA_PATH=./playground/data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json  # config: data_path (docs/Data.md, ShareGPT4V)
IMAGE_FOLDER=./playground/data                         # config: image_folder = data_root + 'data' (sam, coco, llava, ...)
OUTPUT_DIR=./checkpoints/llava-llama3-8b-v1.1-xtuner-pretrain  # rerun the same command to resume
NUM_GPUS=8                  # per node; config: gpu8
PER_DEVICE_BATCH=16         # config: batch_size = 16 (per device)
GRAD_ACCUM=2                # config: accumulative_counts = 2; global batch = NNODES * NUM_GPUS * 16 * 2 = 256 on one node
LR=1e-3                     # config: lr = 1e-3 (AdamW, betas 0.9/0.999, weight_decay 0, max_norm 1, warmup_ratio 0.03, cosine)
MAX_LEN=4096                # config: max_length = int(4096 - (336 / 14)**2) = 3520 text tokens + 576 image tokens;
                            #   our limit counts the image tokens too, so it is XTuner's 4096;
                            #   a longer image sample is skipped and counted, where XTuner cuts its text
REPORT_TO=wandb             # or tensorboard, or none
# ---------------------------------------------------------------------------
# Fixed by the recipe: template llama3_chat (our llava_llama_3); pad_image_to_square=False (square: CLIP's
# resize + centre crop, one 336-px tile, no anyres); projector_depth=2 (mlp2x_gelu) and visual_select_layer=-2
# (LLaVAModel's defaults); freeze_llm=True, freeze_visual_encoder=True; max_epochs = 1; save_steps = 1000,
# save_total_limit = 2; dataloader_num_workers = 4; activation checkpointing on (LLaVAModel's default).
# Precision: XTuner's AmpOptimWrapper runs fp16 with dynamic loss scaling; bf16 here (same speed on
# A100/H100, fp32's range, no loss scale).

launch "$NUM_GPUS" llava/train/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path "$LLM" \
    --version llava_llama_3 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio square \
    --mm_patch_merge_type flat \
    --bf16 True \
    --tf32 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 1000 \
    --save_total_limit 2 \
    --learning_rate "$LR" \
    --weight_decay 0. \
    --max_grad_norm 1.0 \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 10 \
    --model_max_length "$MAX_LEN" \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --seed 1024 \
    --report_to "$REPORT_TO"
