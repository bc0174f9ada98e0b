"""Retrieval scoring at scale: 100,000 documents, chunked `top_k_search` against one dense score matrix.

    python bench/retrieval_scale.py                                  # 1,000 and 10,000 queries x 100,000 documents
    python bench/retrieval_scale.py --queries 1000 --corpus 100000 --no-dense

`embedding_mtl.top_k_search` (what `model.search` and the retrieval metrics use) scores 256 queries against 50,000
documents at a time and keeps each query's running top k with `torch.topk`; the dense way is `queries @ corpus.T`
then one `topk`. Each (way, size) runs in its own process on seeded random unit vectors of width 384 (the scoring
does not care where the vectors came from; `bench/encode_memory.py` measures `encode` itself, flat in n): the table
gives the peak resident memory the scoring added over the embeddings (the kernel's high-water mark, reset just
before it), its time, and whether the chunked top 100 equals the dense one (up to swaps of scores equal within 1e-6). `--dense-limit` skips the dense way
where its score matrix alone would pass that many MiB (10,000 x 100,000 float32 scores are 3.8 GiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import common

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[5])
import common
from embedding_mtl import top_k_search
n_queries, n_corpus, way, k = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
generator = torch.Generator().manual_seed(0)
corpus = torch.nn.functional.normalize(torch.randn(n_corpus, 384, generator=generator), dim=-1)
queries = torch.nn.functional.normalize(torch.randn(n_queries, 384, generator=generator), dim=-1)
before = common.reset_peak_rss()
start = time.perf_counter()
if way == "dense":
    scores, indices = torch.topk(queries @ corpus.T, k, dim=1)
else:
    scores, indices = top_k_search(queries, corpus, k)
seconds = time.perf_counter() - start
peak = common.status_kb("VmHWM")
check = None
if way == "chunked":  # the first 256 queries' top k against the dense one (256 x corpus scores: 98 MiB at 100k)
    dense = torch.topk(queries[:256] @ corpus.T, k, dim=1)
    # Same scores; same documents in the same order, except where two scores tie within float noise (1e-6: the
    # chunks' matrix products may round the last bit differently) and swap places.
    mismatch = dense.indices != indices[:256]
    near_tie = torch.zeros_like(mismatch)
    gaps = (dense.values[:, 1:] - dense.values[:, :-1]).abs() < 1e-6
    near_tie[:, 1:] |= gaps
    near_tie[:, :-1] |= gaps
    check = bool(torch.allclose(dense.values, scores[:256], atol=1e-6) and not (mismatch & ~near_tie).any())
print(json.dumps({"queries": n_queries, "corpus": n_corpus, "way": way, "k": k, "seconds": seconds,
                  "added_mb": (peak - before) / 1024, "embeddings_mb": (corpus.numel() + queries.numel()) * 4 / 2**20,
                  "equals_dense_top_k": check}))
"""


def measure(n_queries: int, n_corpus: int, way: str, k: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(n_queries), str(n_corpus), way, str(k),
                             str(common.REPO / "bench")], capture_output=True, text=True, check=True,
                            cwd=common.REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--dense-limit", type=int, default=4096, help="MiB of dense scores above which to skip it")
    parser.add_argument("--out", default=str(common.REPO / "bench" / "results" / "retrieval_scale.json"))
    args = parser.parse_args()
    rows = []
    for n_queries in args.queries:
        ways = ["chunked"]
        if not args.no_dense and n_queries * args.corpus * 4 / 2**20 <= args.dense_limit:
            ways.append("dense")
        for way in ways:
            rows.append(measure(n_queries, args.corpus, way, args.k))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nMachine: {common.machine_line()}")
    print("| queries x documents | way | scoring adds (peak RSS, MiB) | seconds | top 100 equals the dense one |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        check = {True: "yes", False: "NO", None: "–"}[row["equals_dense_top_k"]]
        print(f"| {row['queries']:,} x {row['corpus']:,} | {row['way']} | {row['added_mb']:.0f} | "
              f"{row['seconds']:.2f} | {check} |")
    common.write_json(args.out, {"machine": common.machine_line(), "rows": rows})


if __name__ == "__main__":
    main()
