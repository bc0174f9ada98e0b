"""Benchmark ONNX Runtime inference (fp32 and int8) against PyTorch on CPU, in one process, on real text.

1. Speed: the same TweetEval test tweets embedded by sentence-transformers' PyTorch `encode`, our PyTorch `encode`,
   our ONNX fp32 and our ONNX int8 (all-MiniLM-L6-v2, normalised, same batch size and thread count). The ONNX fp32
   output is checked equal to sentence-transformers' to 1e-4 before timing. Whole `encode` calls alternate after a
   warm-up, the order rotating every repeat; the table gives median sentences/s and ratios to sentence-transformers.
2. Quality cost of int8: STS-B dev Spearman (cosine of the two sentences' embeddings against the gold score) for the
   base MiniLM and, with `--quickstart DIR`, for the quickstart model, fp32 against int8; and the quickstart model's
   test metrics (sentiment accuracy on data/sst/test.jsonl, WNUT-17 entity F1 on data/wnut17/test.conll, scored as
   the Trainer scores them: first sub-token per word, seqeval) from the fp32 and int8 graphs.

    python bench/bench_onnx.py [--threads 2] [--n 2000] [--repeats 3] [--batch-size 32] [--quickstart /tmp/qs]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_model import CHECKPOINT, TASKS, fmt_times, load_texts, machine  # noqa: E402

TOLERANCE = 1e-4
TARGETS = {"onnx fp32": 1.5, "onnx int8": 2.2}  # speed ratio to sentence-transformers, at least
STSB_DEV = REPO.parent / "shared" / "data" / "stsb" / "dev.csv"


def cpu_flags() -> str:
    """The SIMD flags that matter for int8 and fp32 kernels, as /proc/cpuinfo lists them."""
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in wanted if flag in flags) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def export_pair(model, folder: Path, reuse: bool) -> dict[str, Path]:
    """fp32 and int8 ONNX folders of `model` under `folder` (re-exported unless `reuse` and they exist)."""
    folders = {"fp32": folder / "fp32", "int8": folder / "int8"}
    for name, path in folders.items():
        if not (reuse and (path / "onnx_mtl.json").is_file()):
            start = time.perf_counter()
            model.export_onnx(path, quantize=None if name == "fp32" else "int8")
            print(f"# exported {name} to {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return folders


def interleaved(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Alternate whole runs of every contender `repeats` times, rotating the order each repeat; seconds per run."""
    names = list(contenders)
    times = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------------- quality
def read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if len(row) >= 3]
    return [row[0] for row in rows], [row[1] for row in rows], np.array([float(row[2]) for row in rows])


def stsb_spearman(encode, pairs) -> float:
    """Spearman x100 of cos(embedding(s1), embedding(s2)) against the gold scores."""
    from scipy.stats import spearmanr

    first, second, gold = pairs
    a, b = encode(first), encode(second)
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return 100 * float(spearmanr(cosine, gold).statistic)


def run_logits(onnx_model, encodings: list, output: str, batch_size: int = 64) -> list[np.ndarray]:
    """One output of the graph for each encoding, padding rows cut off (`[labels]` or `[seq, labels]` each)."""
    result = []
    for start in range(0, len(encodings), batch_size):
        batch = encodings[start : start + batch_size]
        (logits,) = onnx_model.session.run([output], onnx_model.feed(batch))
        result.extend(row if row.ndim == 1 else row[: len(encoding.ids)] for row, encoding in zip(logits, batch))
    return result


def quickstart_metrics(onnx_model) -> dict[str, float]:
    """Sentiment accuracy and NER entity F1 (x100) on the quickstart's test files, from the ONNX graph."""
    from seqeval.metrics import f1_score

    from data_mtl import read_conll

    tasks = {task["type"]: task for task in onnx_model.tasks}
    sentiment, ner = tasks["sequence_classification"], tasks["token_classification"]
    with open(REPO / "data" / "sst" / "test.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    encodings = onnx_model.tokenizer.encode_batch([row["text"] for row in rows])
    predicted = [
        sentiment["labels"][int(row.argmax())]
        for row in run_logits(onnx_model, encodings, f"{sentiment['name']}_logits")
    ]
    accuracy = float(np.mean([guess == row["label"] for guess, row in zip(predicted, rows)]))

    sentences = read_conll(REPO / "data" / "wnut17" / "test.conll")
    encodings = onnx_model.tokenizer.encode_batch([sentence["tokens"] for sentence in sentences], is_pretokenized=True)
    y_true, y_pred = [], []
    for sentence, encoding, logits in zip(
        sentences, encodings, run_logits(onnx_model, encodings, f"{ner['name']}_logits")
    ):
        seen, gold, guess = set(), [], []
        for token, word in enumerate(encoding.word_ids):
            if word is None or word in seen:
                continue
            seen.add(word)  # the word's first sub-token carries its label, as in training and evaluation
            gold.append(sentence["tags"][word])
            guess.append(ner["labels"][int(logits[token].argmax())])
        y_true.append(gold)
        y_pred.append(guess)
    return {"sentiment accuracy": 100 * accuracy, "ner F1": 100 * float(f1_score(y_true, y_pred, zero_division=0))}


def quality_rows(name: str, folders: dict[str, Path], threads: int, pairs, with_tasks: bool) -> list[tuple]:
    from onnx_mtl import OnnxMultiTaskModel

    models = {kind: OnnxMultiTaskModel.from_pretrained(path, num_threads=threads) for kind, path in folders.items()}
    scores = {kind: {"STS-B dev Spearman": stsb_spearman(model.encode, pairs)} for kind, model in models.items()}
    if with_tasks:
        for kind, model in models.items():
            scores[kind].update(quickstart_metrics(model))
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
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table row shows as soon as it is measured

    import onnxruntime
    import torch
    from transformers.utils import logging as hf_logging

    from modeling_mtl import MultiTaskModel, resolve_checkpoint
    from onnx_mtl import OnnxMultiTaskModel

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_checkpoint(CHECKPOINT)
    ours = MultiTaskModel.from_encoder(CHECKPOINT, tasks=TASKS, normalize_embeddings=True).eval()
    from transformers import AutoTokenizer

    ours.tokenizer = AutoTokenizer.from_pretrained(path)
    base_folders = export_pair(ours, args.workdir / "minilm", args.reuse_exports)
    header = (
        f"Machine: {machine()}; flags: {cpu_flags()}; {args.threads} threads (torch.set_num_threads and ONNX Runtime "
        f"intra-op), batch size {args.batch_size}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}."
    )
    print(header + "\n")

    if not args.skip_speed:
        from sentence_transformers import SentenceTransformer

        texts, source = load_texts(args.n)
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
        times = interleaved(contenders, args.repeats)
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
                f"{fmt_times(values)} | {verdict} |"
            )
        print()

    if not args.skip_quality:
        pairs = read_stsb(STSB_DEV)
        rows = quality_rows("all-MiniLM-L6-v2 (base)", base_folders, args.threads, pairs, with_tasks=False)
        if args.quickstart is not None:
            trained = MultiTaskModel.from_pretrained(args.quickstart, dtype=torch.float32).eval()
            folders = export_pair(trained, args.workdir / "quickstart", args.reuse_exports)
            rows += quality_rows(f"quickstart ({args.quickstart})", folders, args.threads, pairs, with_tasks=True)
        print("| model | metric (x100) | ONNX fp32 | ONNX int8 | int8 − fp32 |")
        print("| --- | --- | --- | --- | --- |")
        for model_name, metric, fp32, int8 in rows:
            print(f"| {model_name} | {metric} | {fp32:.2f} | {int8:.2f} | {int8 - fp32:+.2f} |")


if __name__ == "__main__":
    main()
