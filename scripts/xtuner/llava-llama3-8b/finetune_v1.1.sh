#!/usr/bin/env bash
# XTuner's LLaVA-Llama-3-8B-v1.1, stage 2 (finetune): the whole LLM and the
# projector train, the CLIP tower only through LoRA (r 64, alpha 16), on
# InternVL-SFT (nine JSONL sources, about 1.2M samples: internvl_sft.yaml here),
# from pretrain_v1.1.sh's projector. 8 GPUs.
# Every value is XTuner's, cited from
#   xtuner/configs/llava/llama3_8b_instruct_clip_vit_large_p14_336/finetune/
#   llava_llama3_8b_instruct_full_clip_vit_large_p14_336_lora_e1_gpu8_internvl_finetune.py   ("config" below)
# launched as in its README: NPROC_PER_NODE=8 xtuner train ... --deepspeed deepspeed_zero2 --seed 1024.
set -e
source ./scripts/common.sh   # the launcher: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT or HOSTFILE (docs/MultiNode.md)

# --- what you edit --------------------------------------------------------
LLM=./checkpoints/Meta-Llama-3-8B-Instruct             # config: llm_name_or_path meta-llama/Meta-Llama-3-8B-Instruct
VISION_TOWER=./checkpoints/clip-vit-large-patch14-336  # config: visual_encoder_name_or_path openai/clip-vit-large-patch14-336
PRETRAIN_DIR=./checkpoints/llava-llama3-8b-v1.1-xtuner-pretrain  # OUTPUT_DIR of pretrain_v1.1.sh (config: pretrained_pth)
DATA_PATH=./scripts/xtuner/llava-llama3-8b/internvl_sft.yaml  # config: the nine *_data_path / *_image_folder pairs
IMAGE_FOLDER=./playground/internvl_sft/data            # unused: every entry of the YAML names its own (docs/Data.md)
OUTPUT_DIR=./checkpoints/llava-llama3-8b-v1.1-xtuner-sft    # rerun the same command to resume
NUM_GPUS=8                  # per node; config: gpu8
PER_DEVICE_BATCH=4          # config: batch_size = 4 (per device)
GRAD_ACCUM=4                # config: accumulative_counts = 4; global batch = NNODES * NUM_GPUS * 4 * 4 = 128 on one node
LR=2e-5                     # config: lr = 2e-5, LLM, projector and the tower's LoRA alike
MAX_LEN=4096                # config: max_length = int(4096 - (336 / 14)**2) text tokens + 576 image tokens
                            #   (counted with the image tokens; a longer image sample is skipped and
                            #   counted, where XTuner cuts its text)
VISION_LORA_R=64            # config: visual_encoder_lora r=64
VISION_LORA_ALPHA=16        # config: visual_encoder_lora lora_alpha=16
VISION_LORA_DROPOUT=0.05    # config: visual_encoder_lora lora_dropout=0.05, bias='none'
REPORT_TO=wandb             # or tensorboard, or none
# ---------------------------------------------------------------------------
# Fixed by the recipe: template llama3_chat (our llava_llama_3); pad_image_to_square=True (pad: LLaVA-1.5's
# mean-colour padding, one 336-px tile); freeze_llm=False (the whole LLM trains); freeze_visual_encoder=True
# plus visual_encoder_lora (only the tower's LoRA trains); LengthGroupedSampler on modality_length
# (--group_by_modality_length) over the ConcatDataset of all nine; max_epochs = 1; dataloader_num_workers = 4; save_steps = 1000, save_total_limit = 2;
# AdamW, weight_decay 0, max_norm 1, warmup_ratio 0.03, cosine. bf16 instead of XTuner's fp16 (see pretrain.sh).

launch "$NUM_GPUS" llava/train/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path "$LLM" \
    --version llava_llama_3 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_DIR/mm_projector.bin" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_lora_enable True \
    --mm_vision_lora_r "$VISION_LORA_R" \
    --mm_vision_lora_alpha "$VISION_LORA_ALPHA" \
    --mm_vision_lora_dropout "$VISION_LORA_DROPOUT" \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --mm_patch_merge_type flat \
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
