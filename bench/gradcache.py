"""Gradient caching (`mini_batch_size`): effective batch against peak memory and TREC QA dev MAP, cached and not.

    python bench/gradcache.py                                   # the table of BENCHMARKS.md (resumable)
    python bench/gradcache.py --batches 16 64 --mini-batch-size 16 --out /tmp/gradcache
    python bench/gradcache.py --batches 16 64 --max-uncached 64 --matryoshka-dims 256 128 64   # + a Matryoshka row

The retrieval benchmark's training pairs (MSRP paraphrases + TREC QA train positives, `common.retrieval_pairs`,
2,755 pairs) as one `retrieval` task, no heads, on all-MiniLM-L6-v2: 1 epoch at `--learning-rate` (constant
warmup 10%, batch = the effective batch), then TREC QA dev MAP / MRR and STS-B dev. Each configuration runs in its
own process, so its peak resident memory (`ru_maxrss`) is its own; the table gives the peak and the part that
training added over the loaded model and data (`rss_before_train`). Uncached runs take the whole batch through the
encoder at once; cached runs (`mini_batch_size`) embed it in mini-batches without gradients, take the loss on the
whole batch, then replay each mini-batch with gradients, as sentence-transformers'
`CachedMultipleNegativesRankingLoss` does. Same batch and seed, same loss and gradients: the MAP of a cached run
should equal the uncached one at that batch, for the memory of the mini-batch.

`--matryoshka-dims` adds one more run at the smallest batch, uncached, with `matryoshka_dims` (every prefix
trained, as sentence-transformers' `MatryoshkaLoss`), and every run is scored at each of those widths too (its
embeddings truncated and renormalised), so the Matryoshka row stands beside plain truncation of the others.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import common


def rss_mib() -> float:
    """The process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(batch: int, mini: int | None, args, matryoshka: bool = False) -> dict:
    """Train one configuration in this process and score it."""
    from embeddings import trecqa_scores

    from mtl_st.evaluation.sts import read_sts_pairs, sts_spearman
    from trainer_mtl import MultiTaskTrainingArguments

    pairs = common.retrieval_pairs(Path(args.workdir) / "retrieval_pairs.jsonl", args.shared_data)
    entry = {"name": "retrieval", "type": "retrieval", "data_files": {"train": str(pairs)},
             "validation_split_fraction": 0.0, "test_split_fraction": 0.0}
    if mini:
        entry["mini_batch_size"] = mini
    if matryoshka:
        entry["matryoshka_dims"] = args.matryoshka_dims
    tokenizer = common.load_tokenizer()
    prepared = common.prepare([entry])
    train = common.tokenize(prepared, tokenizer, args.max_length, {"train": None})["train"]
    model = common.new_model(common.model_tasks(prepared), args.seed, normalize_embeddings=True)
    settings = common.training_settings(f"{args.workdir}/{run_name(batch, mini, matryoshka)}", args.seed, num_train_epochs=1,
                                        per_device_train_batch_size=batch, learning_rate=args.learning_rate,
                                        layerwise_lr_decay=1.0)
    before = rss_mib()
    start = time.time()
    trainer, metrics = common.train_and_score(model, MultiTaskTrainingArguments(**settings), train, {}, tokenizer)
    seconds = time.time() - start
    peak = rss_mib()
    model.eval()
    result = {"effective_batch": batch, "mini_batch_size": mini, "matryoshka_dims": args.matryoshka_dims if matryoshka else None,
              "steps": trainer.state.global_step,
              "train_seconds": round(seconds, 1), "rss_before_train_mib": round(before), "peak_rss_mib": round(peak),
              "train_rss_mib": round(peak - before)}
    result.update(trecqa_scores(model, tokenizer, common.trecqa_rows("dev", args.shared_data), args.matryoshka_dims))
    result["stsb_dev_spearman"] = sts_spearman(model, read_sts_pairs(args.shared_data / "stsb" / "dev.csv"),
                                               tokenizer=tokenizer)
    return result


def run_name(batch: int, mini: int | None, matryoshka: bool) -> str:
    return f"b{batch}-m{mini or 0}{'-matryoshka' if matryoshka else ''}"


def configurations(args) -> list[tuple[int, int | None, bool]]:
    """Every `--batches` size uncached (up to `--max-uncached`) and, above the mini-batch size, cached; with
    `--matryoshka-dims`, the smallest batch once more with them."""
    rows = []
    for batch in args.batches:
        if batch <= args.max_uncached:
            rows.append((batch, None, False))
        if batch > args.mini_batch_size:
            rows.append((batch, args.mini_batch_size, False))
    if args.matryoshka_dims:
        rows.append((min(args.batches), None, True))
    return rows


def summarize(out: Path) -> list[dict]:
    rows = [json.loads(path.read_text()) for path in sorted(out.glob("b*-m*.json"))]
    rows.sort(key=lambda row: (bool(row.get("matryoshka_dims")), row["effective_batch"], row["mini_batch_size"] or 0))
    print("| effective batch | mini-batch | steps | peak RSS MiB | added by training MiB | TREC QA dev MAP | MRR "
          "| STS-B dev x100 | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        kind = f"{row['mini_batch_size'] or 'uncached'}{', Matryoshka' if row.get('matryoshka_dims') else ''}"
        print(f"| {row['effective_batch']} | {kind} | {row['steps']} | "
              f"{row['peak_rss_mib']} | {row['train_rss_mib']} | {row['trecqa_dev_map']:.4f} | "
              f"{row['trecqa_dev_mrr']:.4f} | {100 * row['stsb_dev_spearman']:.2f} | {row['train_seconds']:.0f} |")
    dims = sorted({key.rsplit("_dim", 1)[1] for row in rows for key in row if key.startswith("trecqa_dev_map_dim")},
                  key=int, reverse=True)
    if dims:
        print("\n| run | TREC QA dev MAP at 384 | " + " | ".join(f"at {d}" for d in dims) + " |")
        print("| --- | --- |" + " --- |" * len(dims))
        for row in rows:
            kind = f"{row['mini_batch_size'] or 'uncached'}{', Matryoshka' if row.get('matryoshka_dims') else ''}"
            print(f"| batch {row['effective_batch']}, {kind} | {row['trecqa_dev_map']:.4f} | "
                  + " | ".join(f"{row.get(f'trecqa_dev_map_dim{d}', float('nan')):.4f}" for d in dims) + " |")
    common.write_json(out / "gradcache.json", {"machine": common.machine_line(), "rows": rows})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--max-uncached", type=int, default=128, help="largest batch also run without caching")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA)
    parser.add_argument("--workdir", default="/tmp/mtl-gradcache")
    parser.add_argument("--out", type=Path, default=common.REPO / "bench" / "results" / "gradcache")
    parser.add_argument("--matryoshka-dims", type=int, nargs="*", default=None,
                        help="one more run at the smallest batch with these Matryoshka widths; every run scored at each")
    parser.add_argument("--one", nargs=3, type=int, metavar=("BATCH", "MINI", "MATRYOSHKA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        batch, mini, matryoshka = args.one
        result = run_one(batch, mini or None, args, bool(matryoshka))
        common.write_json(args.out / f"{run_name(batch, mini, bool(matryoshka))}.json", result)
        return
    for name, path in (("TREC QA dev", args.shared_data / "trecqa" / "dev.csv"),
                       ("STS-B dev", args.shared_data / "stsb" / "dev.csv")):
        common.require(path, name)
    args.out.mkdir(parents=True, exist_ok=True)
    for batch, mini, matryoshka in configurations(args):
        path = args.out / f"{run_name(batch, mini, matryoshka)}.json"
        if path.exists():
            print(f"skip {path.name} (done)", flush=True)
            continue
        command = [sys.executable, __file__, "--one", str(batch), str(mini or 0), str(int(matryoshka)),
                   "--out", str(args.out),
                   "--learning-rate", str(args.learning_rate), "--max-length", str(args.max_length),
                   "--seed", str(args.seed), "--shared-data", str(args.shared_data), "--workdir", args.workdir,
                   *(["--matryoshka-dims", *map(str, args.matryoshka_dims)] if args.matryoshka_dims else [])]
        print(f"batch {batch}, {'mini-batch ' + str(mini) if mini else 'uncached'}"
              f"{', Matryoshka' if matryoshka else ''} ...", flush=True)
        subprocess.run(command, check=True)
    summarize(args.out)


if __name__ == "__main__":
    main()
