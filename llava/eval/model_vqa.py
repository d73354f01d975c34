"""LLaVA's `model_vqa.py` (LLaVA-Bench, MM-Vet): the same files and flags as `model_vqa_loader`.

    python -m llava.eval.model_vqa --model-path CKPT --question-file q.jsonl --image-folder images/ \\
        --answers-file answers.jsonl --temperature 0 --conv-mode vicuna_v1
"""

from llava.eval.model_vqa_loader import eval_model, main, parse_args

__all__ = ["eval_model", "main", "parse_args"]

if __name__ == "__main__":
    main()
