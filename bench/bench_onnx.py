"""Benchmark ONNX Runtime inference (fp32 and int8) against PyTorch on CPU, in one process, on real text.

1. Speed: the same TweetEval test tweets embedded by sentence-transformers' PyTorch `encode`, our PyTorch `encode`,
   our ONNX fp32 and our ONNX int8 (all-MiniLM-L6-v2, normalised, same batch size and thread count). The ONNX fp32
   output is checked equal to sentence-transformers' to 1e-4 before timing. Whole `encode` calls alternate after a
   warm-up, the order rotating every repeat; the table gives median sentences/s and ratios to sentence-transformers.
2. Quality cost of int8: STS-B dev Spearman (cosine of the two sentences' embeddings against the gold score) for the
   base MiniLM and, with `--quickstart DIR`, for the quickstart model, fp32 against int8; and the quickstart model's
   test metrics (sentiment accuracy on data/sst/test.jsonl, WNUT-17 entity F1 on data/wnut17/test.conll, as
   configs/quickstart.yaml lists them, scored as the Trainer scores them: first sub-token per word, seqeval) from
   the fp32 and int8 graphs.

    python bench/bench_onnx.py [--threads 2] [--n 2000] [--repeats 3] [--batch-size 32] [--quickstart /tmp/qs]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common
import numpy as np

TOLERANCE = 1e-4
TARGETS = {"onnx fp32": 1.5, "onnx int8": 2.2}  # speed ratio to sentence-transformers, at least
QUICKSTART_CONFIG = common.REPO / "configs" / "quickstart.yaml"


def export_pair(model, folder: Path, reuse: bool) -> dict[str, Path]:
    """fp32 and int8 ONNX folders of `model` under `folder` (re-exported unless `reuse` and they exist)."""
    from mtl_st.onnx.export import METADATA_FILE

    folders = {"fp32": folder / "fp32", "int8": folder / "int8"}
    for name, path in folders.items():
        if not (reuse and (path / METADATA_FILE).is_file()):
            start = time.perf_counter()
            model.export_onnx(path, quantize=None if name == "fp32" else "int8")
            print(f"# exported {name} to {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return folders


# ---------------------------------------------------------------------------------------------------- quality
def graph_logits(onnx_model, rows, output: str, batch_size: int = 64) -> np.ndarray:
    """One output of the graph over tokenized rows: `[n, labels]`, or `[n, longest row, labels]` (zeros past a row)."""
    from encoding_mtl import pad_batch

    with_types = "token_type_ids" in onnx_model.input_names
    parts = []
    for start in range(0, len(rows), batch_size):
        ids, keep = pad_batch(rows[start : start + batch_size]["input_ids"], onnx_model.pad_token_id)
        feed = {"input_ids": ids, "attention_mask": keep.astype(np.int64)}
        if with_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        parts.append(onnx_model.session.run([output], feed)[0])
    if parts[0].ndim == 2:
        return np.concatenate(parts)
    logits = np.zeros((len(rows), max(part.shape[1] for part in parts), parts[0].shape[-1]), dtype=parts[0].dtype)
    row = 0
    for part in parts:
        logits[row : row + len(part), : part.shape[1]] = part
        row += len(part)
    return logits


def padded_labels(rows, width: int) -> np.ndarray:
    """The rows' label ids as one array: `[n]`, or `[n, width]` padded with -100 (not scored)."""
    labels = rows["labels"]
    if not isinstance(labels[0], list):
        return np.asarray(labels)
    out = np.full((len(labels), width), -100, dtype=np.int64)
    for i, row in enumerate(labels):
        out[i, : len(row)] = row
    return out


def quickstart_metrics(onnx_model, tokenizer) -> dict[str, float]:
    """Sentiment accuracy and NER entity F1 (x100) on the quickstart's test files, from the ONNX graph, scored as
    the Trainer scores them: the test splits tokenized as in training (`mtl_st.data.prepare`, the graph's label
    lists), the task type's metrics (`trainer_mtl.task_metrics`)."""
    from trainer_mtl import task_metrics

    tasks = {task["type"]: task for task in onnx_model.tasks}
    chosen = [tasks["sequence_classification"], tasks["token_classification"]]
    entries = common.task_entries([task["name"] for task in chosen], config=QUICKSTART_CONFIG)
    specs, _, splits = common.prepare(entries)
    labels = {task["name"]: task["labels"] for task in chosen}
    test = common.tokenize((specs, labels, splits), tokenizer, int(onnx_model.metadata["max_length"]),
                           {"test": None})["test"]
    scores = {}
    for task, metric, name in zip(chosen, ("accuracy", "f1"), ("sentiment accuracy", "ner F1")):
        logits = graph_logits(onnx_model, test[task["name"]], f"{task['name']}_logits")
        label_ids = padded_labels(test[task["name"]], logits.shape[1] if logits.ndim == 3 else 0)
        scores[name] = 100 * task_metrics(task["type"], logits, label_ids, task["labels"])[metric]
    return scores


def quality_rows(name: str, folders: dict[str, Path], threads: int, pairs, tokenizer=None) -> list[tuple]:
    """STS-B dev Spearman (x100) of the fp32 and int8 graphs; with `tokenizer` (the trained model's), also the
    quickstart's test metrics."""
    from mtl_st.evaluation.sts import sts_spearman
    from mtl_st.onnx import OnnxMultiTaskModel

    models = {kind: OnnxMultiTaskModel.from_pretrained(path, num_threads=threads) for kind, path in folders.items()}
    scores = {kind: {"STS-B dev Spearman": 100 * sts_spearman(model, pairs)} for kind, model in models.items()}
    if tokenizer is not None:
        for kind, model in models.items():
            scores[kind].update(quickstart_metrics(model, tokenizer))
    return [(name, metric, scores["fp32"][metric], scores["int8"][metric]) for metric in scores["fp32"]]


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--n", type=int, default=2000, help="number of tweets (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each contender (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for every contender (default 32)")
    parser.add_argument(
        "--quickstart", type=Path, default=None, help="a trained quickstart model folder (train.py output)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_onnx"), help="where the ONNX exports go")
    parser.add_argument("--reuse-exports", action="store_true", help="keep exports already in --workdir")
    parser.add_argument("--skip-speed", action="store_true", help="only the quality comparison")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed comparison")
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA,
                        help="the data folder: TweetEval test tweets, STS-B dev (default ../shared/data)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table row shows as soon as it is measured

    import onnxruntime
    import torch
    from transformers.utils import logging as hf_logging

    from modeling_mtl import MultiTaskModel
    from mtl_st.checkpoints import resolve_checkpoint
    from mtl_st.evaluation.sts import read_sts_pairs
    from mtl_st.onnx import OnnxMultiTaskModel

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_checkpoint(common.ENCODER)
    ours = common.new_model(common.HEAD_TASKS, 0, normalize_embeddings=True).eval()
    ours.tokenizer = common.load_tokenizer(common.ENCODER)
    base_folders = export_pair(ours, args.workdir / "minilm", args.reuse_exports)
    header = (
        f"Machine: {common.machine_line()}; {args.threads} threads (torch.set_num_threads and ONNX Runtime "
        f"intra-op), batch size {args.batch_size}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}."
    )
    print(header + "\n")

    if not args.skip_speed:
        from sentence_transformers import SentenceTransformer

        texts, source = common.load_texts(args.n, args.shared_data)
        n, bs = len(texts), args.batch_size
        print(f"# {n} texts from {source}", file=sys.stderr)
        st = SentenceTransformer(path, device="cpu").eval()
        onnx = {
            kind: OnnxMultiTaskModel.from_pretrained(folder, num_threads=args.threads)
            for kind, folder in base_folders.items()
        }
        contenders = {
            "sentence-transformers (PyTorch)": lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True),
            "ours (PyTorch)": lambda: ours.encode(texts, batch_size=bs, normalize=True),
            "onnx fp32": lambda: onnx["fp32"].encode(texts, batch_size=bs),
            "onnx int8": lambda: onnx["int8"].encode(texts, batch_size=bs),
        }
        outputs = {name: run() for name, run in contenders.items()}  # the warm-up, and the checks
        reference = outputs["sentence-transformers (PyTorch)"]
        diff = float(np.abs(outputs["onnx fp32"] - reference).max())
        if not diff <= TOLERANCE:
            sys.exit(f"bench_onnx.py: ONNX fp32 differs from sentence-transformers by {diff:.2e} > {TOLERANCE:g}")
        cosine = float((outputs["onnx int8"] * outputs["onnx fp32"]).sum(-1).mean())
        print(
            f"# ONNX fp32 vs sentence-transformers: max abs diff {diff:.1e}; int8 vs fp32 mean cosine {cosine:.4f}",
            file=sys.stderr,
        )
        times = common.interleaved(contenders, args.repeats)
        baseline = times["sentence-transformers (PyTorch)"]
        print(
            f"{n} TweetEval test tweets, medians of {args.repeats} interleaved runs (ONNX fp32 equals "
            f"sentence-transformers to {diff:.1e}; int8 mean cosine to fp32 {cosine:.4f}).\n"
        )
        print(
            "| contender | median s | sentences/s | ratio of medians | median of paired ratios | runs (s) | target |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, values in times.items():
            median = statistics.median(values)
            ratio = statistics.median(baseline) / median
            paired = statistics.median([b / v for b, v in zip(baseline, values)])
            target = TARGETS.get(name)
            verdict = (
                "" if target is None else f"≥ {target}×: {'met' if min(ratio, paired) >= target else '**not met**'}"
            )
            print(
                f"| {name} | {median:.2f} | {n / median:,.0f} | **{ratio:.2f}×** | {paired:.2f}× | "
                f"{common.fmt_times(values)} | {verdict} |"
            )
        print()

    if not args.skip_quality:
        pairs = read_sts_pairs(args.shared_data / "stsb" / "dev.csv")
        rows = quality_rows("all-MiniLM-L6-v2 (base)", base_folders, args.threads, pairs)
        if args.quickstart is not None:
            trained = MultiTaskModel.from_pretrained(args.quickstart, dtype=torch.float32).eval()
            folders = export_pair(trained, args.workdir / "quickstart", args.reuse_exports)
            rows += quality_rows(f"quickstart ({args.quickstart})", folders, args.threads, pairs, trained.tokenizer)
        print("| model | metric (x100) | ONNX fp32 | ONNX int8 | int8 − fp32 |")
        print("| --- | --- | --- | --- | --- |")
        for model_name, metric, fp32, int8 in rows:
            print(f"| {model_name} | {metric} | {fp32:.2f} | {int8:.2f} | {int8 - fp32:+.2f} |")


if __name__ == "__main__":
    main()
