"""`encode`'s working memory against the number of texts, and its speed against sentence-transformers.

    python bench/encode_memory.py --sizes 10000 100000 --whole 10000 --speed-n 4000 --repeats 3

Memory: each size runs in its own process (all-MiniLM-L6-v2, batch 32): the peak RSS during `encode` (the kernel's
high-water mark, reset just before it) minus the RSS before it, less the returned array itself (n x 384 float32, which any encoder must return), is the working memory.
`encode` tokenises 4,096 texts at a time (`encoding_mtl.CHUNK_SIZE`) and hands the heap's freed pages back to the
system after each chunk (glibc's `malloc_trim`: without it, fragmentation left a few MB per chunk resident, +72 MB
from 10k to 100k texts), so it should not grow with n; the old way
(one tokenizer call over every text first, about 9 KB of Python lists a sentence) is measured beside it with
`--whole` for the contrast. Texts: TweetEval's test tweets, repeated with a running number to reach n.

Speed: `encode` against `SentenceTransformer.encode` on the same `--speed-n` tweets, interleaved (A B, B A, ...),
normalised embeddings, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import common

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[4])
import common
from modeling_mtl import MultiTaskModel
n, whole = int(sys.argv[1]), sys.argv[2] == "whole"
base, _ = common.load_texts(None)
texts = [f"{base[i % len(base)]} {i}" for i in range(n)]
model = MultiTaskModel.from_encoder(common.ENCODER, tasks=[{"name": "s", "type": "sequence_classification",
                                                            "labels": ["a", "b"]}], normalize_embeddings=True).eval()
tokenizer = model.tokenizer
model.encode(texts[:64])
import gc; gc.collect()
before = common.reset_peak_rss()
start = time.perf_counter()
if whole:  # the pre-chunking behaviour: every text tokenised at once, then embedded
    import encoding_mtl
    embeddings = encoding_mtl.encode_texts(texts, model._tokenize_for_encode(tokenizer),
                                           model._embed_for_encode(384, True), 384, 32, chunk_size=n)
else:
    embeddings = model.encode(texts, batch_size=32)
seconds = time.perf_counter() - start
peak = common.status_kb("VmHWM")
print(json.dumps({"n": n, "mode": sys.argv[2], "rss_before_mb": before / 1024, "peak_mb": peak / 1024,
                  "result_mb": embeddings.nbytes / 2**20, "seconds": seconds}))
"""


def memory(n: int, mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(n), mode, "", str(common.REPO / "bench")],
                            capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["working_mb"] = row["peak_mb"] - row["rss_before_mb"] - row["result_mb"]
    return row


def speed(n: int, repeats: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from modeling_mtl import MultiTaskModel
    from mtl_st.checkpoints import resolve_checkpoint

    torch.set_num_threads(2)
    texts, _ = common.load_texts(n)
    ours = MultiTaskModel.from_encoder(common.ENCODER, tasks=[{"name": "s", "type": "sequence_classification",
                                                               "labels": ["a", "b"]}], normalize_embeddings=True).eval()
    theirs = SentenceTransformer(resolve_checkpoint(common.ENCODER), device="cpu")
    times = common.interleaved({"ours": lambda: ours.encode(texts, batch_size=32),
                                "sentence-transformers": lambda: theirs.encode(texts, batch_size=32,
                                                                               normalize_embeddings=True)},
                               repeats, warmup=1)
    return {name: {"seconds": values, "sentences_per_s": n / sorted(values)[len(values) // 2]}
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--whole", type=int, nargs="*", default=None, metavar="N",
                        help="also measure the tokenise-everything-first way (at these sizes; no N: every size)")
    parser.add_argument("--speed-n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(common.REPO / "bench" / "results" / "encode_memory.json"))
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        whole = args.whole is not None and (not args.whole or n in args.whole)
        for mode in (["chunked", "whole"] if whole else ["chunked"]):
            rows.append(memory(n, mode))
            row = rows[-1]
            print(f"{mode:>8} n={n:>7}: working memory {row['working_mb']:7.1f} MB (peak {row['peak_mb']:.0f} MB, "
                  f"result {row['result_mb']:.0f} MB), {n / row['seconds']:.0f} sentences/s", flush=True)
    fast = speed(args.speed_n, args.repeats) if args.speed_n else {}
    if fast:
        ratio = fast["ours"]["sentences_per_s"] / fast["sentence-transformers"]["sentences_per_s"]
        print(f"speed on {args.speed_n} tweets: ours {fast['ours']['sentences_per_s']:.0f}/s, sentence-transformers "
              f"{fast['sentence-transformers']['sentences_per_s']:.0f}/s: {ratio:.2f}x")
        fast["ratio"] = ratio
    common.write_json(args.out, {"machine": common.machine_line(), "memory": rows, "speed": fast})


if __name__ == "__main__":
    main()
