"""LoRA on the encoder against full fine-tuning, on the same CPU subsets as `bench/quality.py`.

    python bench/quality_peft.py --seeds 1 2 3 --train-rows 1000 --test-rows 1000 --epochs 2 \
        --out bench/results/quality_peft_cpu.json

For every seed, in one process and on the same tokenized data (CoNLL-2003 NER + TweetEval sentiment, both tasks on
one all-MiniLM-L6-v2 encoder, `MultiTaskTrainer`, proportional sampling):
- `full`: every encoder weight trained, encoder and head rate `--lr` (exactly `bench/quality.py`'s `mtl` run);
- `lora`: the encoder frozen, LoRA (r 8, alpha 16, dropout 0.1) on query/value, heads trained in full, adapter
  and head rate `--peft-lr` (LoRA's usual rate is about 10x a full fine-tune's).
Results are written after every seed, so an interrupted run keeps the seeds that finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import quality
import torch
from transformers.utils import logging as hf_logging

from mtl_st.training.adapters import apply_peft

LORA = {"method": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], "lora_dropout": 0.1}


def run_lora(seed: int, tasks: list[dict], train: dict, test: dict, tokenizer, args) -> dict:
    """One multi-task run with LoRA on the encoder; returns test metrics, trainable parameters and time."""
    model = apply_peft(common.new_model(tasks, seed), LORA)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.get_base_model().parameters() if not _is_trainable_copy(p, model))
    scores = quality.run_mtl(seed, tasks, train, test, tokenizer, args, args.workdir, model=model, lr=args.peft_lr,
                             name="lora")
    return {**scores, "trainable_parameters": trainable, "total_parameters": total}


def _is_trainable_copy(parameter: torch.Tensor, model) -> bool:
    """PEFT keeps a trainable copy of each head beside the original; count the head once."""
    return any(parameter is p for n, p in model.named_parameters() if ".modules_to_save." in n)


def save(args, runs: list[dict]) -> None:
    """Write what has finished so far (`--out`)."""
    if args.out:
        common.write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                                     "machine": common.machine_line(), "runs": runs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning: encoder and head rate")
    parser.add_argument("--peft-lr", type=float, default=5e-4, help="LoRA: adapter and head rate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA)
    parser.add_argument("--workdir", default="/tmp/mtl-quality-peft")
    parser.add_argument("--skip-full", action="store_true", help="run LoRA only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    common.require(args.shared_data / "conll2003" / "eng.train", "CoNLL-2003")
    tokenizer = common.load_tokenizer(quality.ENCODER)
    tasks, train, test = quality.load_tasks(args.shared_data, args.train_rows or None, args.test_rows or None,
                                            tokenizer, args.max_length)
    runs = []
    for seed in args.seeds:
        t0 = time.time()
        run = {"seed": seed, "lora": run_lora(seed, tasks, train, test, tokenizer, args)}
        runs.append(run)
        print(f"seed {seed} lora: {json.dumps(run['lora'])}", flush=True)
        save(args, runs)
        if not args.skip_full:
            run["full"] = quality.run_mtl(seed, tasks, train, test, tokenizer, args, args.workdir)
        print(f"seed {seed}: " + " | ".join(f"{k} ner_f1 {v['ner_f1']:.4f} sent_acc {v['sentiment_accuracy']:.4f}"
                                            for k, v in run.items() if k != "seed") + f" ({time.time() - t0:.0f}s)",
              flush=True)
        save(args, runs)
    print(f"\n{len(runs)} seeds; trainable parameters with LoRA: {runs[0]['lora']['trainable_parameters']:,} of "
          f"{runs[0]['lora']['total_parameters']:,}\n")
    print("| encoder training | CoNLL-2003 test entity F1 | TweetEval test accuracy | TweetEval test macro-F1 |")
    print("| --- | --- | --- | --- |")
    for name in ("full", "lora"):
        done = [r for r in runs if name in r]
        if done:
            print(f"| {name} | " + " | ".join(common.mean_std([r[name][key] for r in done]) for key in
                                            ("ner_f1", "sentiment_accuracy", "sentiment_macro_f1")) + " |")


if __name__ == "__main__":
    main()
