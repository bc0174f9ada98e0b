"""Load benchmark of `mtl-serve` on loopback: the batching gain, latency, overload behaviour and memory, per backend.

For each backend (PyTorch, ONNX int8) a server process is started on a free loopback port, then:
1. one at a time: single-sentence requests sent sequentially for `--sequential-seconds` (the unbatched baseline);
2. concurrent: `--clients` clients each sending the same kind of request back to back for `--seconds`: throughput
   (requests/s), p50/p99 latency, the batch sizes the server formed (from /metrics) and the server's RSS over time;
3. overload (first backend only, `--overload-clients`, a server with `--max-queue 32`): how many requests got
   429, how many 200, and that every request got an answer (none dropped, no connection error).
Every loop is bounded in time and in requests; only 127.0.0.1 is contacted.

The load comes from a Python asyncio client (aiohttp, the default) or from `wrk` (`--load-generator wrk`, Debian's
package: a C load generator that takes far less of the two cores the server shares with it; one thread, one
connection per client, bodies cycled by a Lua script, latency percentiles from wrk's own histogram).

    python bench/serve_load.py RUN_DIR [--route /embed] [--clients 64] [--seconds 30] [--backends pytorch onnx-int8]
    python bench/serve_load.py --from-encoder [...]   # all-MiniLM-L6-v2 with random heads (speed only)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

BACKEND_OPTIONS = {"pytorch": [], "onnx": ["--onnx"], "onnx-int8": ["--onnx", "--quantize", "int8"]}
MAX_REQUESTS = 200_000  # per phase, whatever the time


def sentences(n: int) -> list[str]:
    """Real sentences: the repo's SST sample (train, then test), cycled to `n`."""
    rows = []
    for split in ("train", "test", "validation"):
        path = common.REPO / "data" / "sst" / f"{split}.jsonl"
        if path.is_file():
            rows += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not rows:
        rows = ["The weather is lovely today.", "Heading to New York with Taylor Swift next week"]
    return [rows[i % len(rows)] for i in range(n)]


def from_encoder_run(folder: Path) -> Path:
    """all-MiniLM-L6-v2 with a random sentiment and NER head, saved with its tokenizer (speed numbers only)."""
    from transformers import AutoTokenizer, set_seed

    from modeling_mtl import MultiTaskModel

    set_seed(0)
    model = MultiTaskModel.from_encoder(common.ENCODER, tasks=common.HEAD_TASKS, normalize_embeddings=True)
    model.tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    model.save_pretrained(folder)
    return folder


def start_server(run_dir: Path, options: list[str]):
    port = common.free_port()
    return common.start_http([sys.executable, "-m", "mtl_st.serve", str(run_dir), "--port", str(port), *options],
                             port, "/health", "server", limit_s=600, poll_s=0.2)


def stop_server(process) -> int:
    return common.stop_process(process, 60)


class RssSampler(threading.Thread):
    """The server process's resident memory (MiB), once a second, until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.process, self.samples, self.done = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.samples.append(self.process.memory_info().rss / 2**20)
            except Exception:  # noqa: BLE001 - the process ended
                return

    def summary(self) -> dict:
        self.done.set()
        samples = self.samples or [0.0]
        return {"rss_first_mib": round(samples[0], 1), "rss_last_mib": round(samples[-1], 1),
                "rss_max_mib": round(max(samples), 1), "samples": len(samples),
                "rss_mib": [round(sample, 1) for sample in samples]}


async def load(url: str, route: str, texts: list[str], clients: int, seconds: float) -> dict:
    """`clients` concurrent clients, each sending one-sentence requests back to back until `seconds` pass."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    counter = iter(range(MAX_REQUESTS))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.perf_counter() >= deadline:
                return
            started = time.perf_counter()
            try:
                async with session.post(url + route, json={"inputs": texts[i % len(texts)]}) as response:
                    await response.read()
                    key = str(response.status)
            except aiohttp.ClientError as error:
                key = f"error {type(error).__name__}"
            latencies.append(time.perf_counter() - started)
            statuses[key] = statuses.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    ordered = sorted(latencies) or [0.0]
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "statuses": statuses,
            "throughput_rps": round(ok / elapsed, 1), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)}


WRK_SCRIPT = """
local bodies = {%s}
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "%s", headers, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n', summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load_wrk(url: str, route: str, texts: list[str], clients: int, seconds: float) -> dict:
    """The same load as `load`, from `wrk` (one thread, `clients` connections, one-sentence bodies cycled)."""
    bodies = ", ".join("[==[" + json.dumps({"inputs": text}) + "]==]" for text in texts[:500])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (bodies, route))
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(int(seconds), 1)}s", "--timeout", "60s",
                              "-s", script.name, url], capture_output=True, text=True, check=True,
                             timeout=seconds + 120).stdout
    finally:
        os.unlink(script.name)
    row = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
    elapsed = row["duration_us"] / 1e6
    failed = row["connect"] + row["read"] + row["write"] + row["timeout"]
    statuses = {"200": row["requests"] - row["non2xx"] - failed}
    if row["non2xx"]:
        statuses["non-2xx"] = row["non2xx"]
    if failed:
        statuses["socket errors"] = failed
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": row["requests"], "statuses": statuses,
            "throughput_rps": round(statuses["200"] / elapsed, 1), "p50_ms": round(row["p50_us"] / 1000, 1),
            "p99_ms": round(row["p99_us"] / 1000, 1), "load_generator": "wrk"}


def batch_totals(url: str) -> dict[str, tuple[float, float]]:
    """`{kind: (inputs, batches)}` so far, from the server's /metrics (cumulative since it started)."""
    import httpx

    totals: dict[str, list[float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for slot, prefix in ((0, "mtl_batch_size_sum"), (1, "mtl_batch_size_count")):
            if line.startswith(prefix):
                totals.setdefault(line.split('"')[1], [0.0, 0.0])[slot] = float(line.split()[-1])
    return {kind: tuple(pair) for kind, pair in totals.items()}


def batch_sizes(url: str, before: dict[str, tuple[float, float]]) -> dict:
    """Mean inputs per model batch since `before` (so the one-at-a-time phase's batches of one are left out)."""
    sizes = {}
    for kind, (inputs, batches) in batch_totals(url).items():
        inputs_before, batches_before = before.get(kind, (0.0, 0.0))
        inputs, batches = inputs - inputs_before, batches - batches_before
        if batches:
            sizes[kind] = {"batches": int(batches), "mean_size": round(inputs / batches, 1)}
    return sizes


def run_load(args, url: str, texts: list[str], clients: int, seconds: float) -> dict:
    if args.load_generator == "wrk":
        return load_wrk(url, args.route, texts, clients, seconds)
    return asyncio.run(load(url, args.route, texts, clients, seconds))


def bench_backend(run_dir: Path, name: str, args, texts: list[str]) -> dict:
    process, url, startup = start_server(run_dir, BACKEND_OPTIONS[name] + ["--max-queue", "4096"])
    result: dict = {"backend": name, "startup_s": round(startup, 1)}
    try:
        asyncio.run(load(url, args.route, texts, 4, 3))  # warm-up
        result["one_at_a_time"] = run_load(args, url, texts, 1, args.sequential_seconds)
        sampler = RssSampler(process.pid)
        sampler.start()
        before = batch_totals(url)
        result["concurrent"] = run_load(args, url, texts, args.clients, args.seconds)
        result["memory"] = sampler.summary()
        result["batches"] = batch_sizes(url, before)
        result["batching_gain"] = round(result["concurrent"]["throughput_rps"]
                                        / max(result["one_at_a_time"]["throughput_rps"], 1e-9), 2)
    finally:
        result["exit_status"] = stop_server(process)
    # the baseline again without the batcher's wait (a lone request then runs at once): the gain over the best
    # one-at-a-time server, not only over this one
    process, url, _ = start_server(run_dir, BACKEND_OPTIONS[name] + ["--max-wait-ms", "0"])
    try:
        asyncio.run(load(url, args.route, texts, 1, 2))  # warm-up
        result["one_at_a_time_no_wait"] = run_load(args, url, texts, 1, args.sequential_seconds)
        result["batching_gain_vs_no_wait"] = round(result["concurrent"]["throughput_rps"] / max(
            result["one_at_a_time_no_wait"]["throughput_rps"], 1e-9), 2)
    finally:
        stop_server(process)
    return result


def bench_overload(run_dir: Path, name: str, args, texts: list[str]) -> dict:
    process, url, _ = start_server(run_dir, BACKEND_OPTIONS[name] + ["--max-queue", "32"])
    try:
        sampler = RssSampler(process.pid)
        sampler.start()
        result = asyncio.run(load(url, args.route, texts, args.overload_clients, args.overload_seconds))
        result["memory"] = sampler.summary()
    finally:
        result["exit_status"] = stop_server(process)
    answered = sum(count for status, count in result["statuses"].items() if status.isdigit())
    result["unanswered"] = result["requests"] - answered
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder (default with --from-encoder: a MiniLM with random heads)")
    parser.add_argument("--from-encoder", action="store_true", help="serve all-MiniLM-L6-v2 with random heads")
    parser.add_argument("--route", default="/embed", help="/embed, /predict, /multitask or /tasks/<name>")
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnx-int8"], choices=sorted(BACKEND_OPTIONS))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sequential-seconds", type=float, default=15.0)
    parser.add_argument("--overload-clients", type=int, default=256)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--load-generator", choices=["python", "wrk"], default="python",
                        help="aiohttp clients in this process, or Debian's wrk (C; far lighter on the shared cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.load_generator == "wrk" and not shutil.which("wrk"):
        parser.error("--load-generator wrk needs wrk on PATH (Debian: apt-get install wrk)")
    if not args.run_dir and not args.from_encoder:
        parser.error("give RUN_DIR or --from-encoder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = tempfile.TemporaryDirectory()
    run_dir = Path(args.run_dir) if args.run_dir else from_encoder_run(Path(scratch.name) / "minilm")
    texts = sentences(2000)
    print(f"machine: {common.machine_line()}")
    results = {"machine": common.machine_line(), "load_generator": args.load_generator, "route": args.route, "run_dir": Path(run_dir).name, "backends": []}
    for name in args.backends:
        result = bench_backend(run_dir, name, args, texts)
        results["backends"].append(result)
        print(json.dumps(result))
    if args.overload_clients:
        results["overload"] = bench_overload(run_dir, args.backends[0], args, texts)
        print(json.dumps({"overload": results["overload"]}))
    print(f"\n| backend | one at a time, req/s (p50 ms; without the wait) | {args.clients} clients, req/s | gain "
          "(without the wait) | p50 / p99 ms | mean batch | RSS first / last / max MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in results["backends"]:
        concurrent, memory = result["concurrent"], result["memory"]
        alone, no_wait = result["one_at_a_time"], result["one_at_a_time_no_wait"]
        batch = next(iter(result["batches"].values()), {}).get("mean_size", "-")
        print(f"| {result['backend']} | {alone['throughput_rps']} ({alone['p50_ms']}; {no_wait['throughput_rps']} "
              f"({no_wait['p50_ms']})) | {concurrent['throughput_rps']} | {result['batching_gain']}x "
              f"({result['batching_gain_vs_no_wait']}x) | {concurrent['p50_ms']} / {concurrent['p99_ms']} | {batch} | "
              f"{memory['rss_first_mib']} / {memory['rss_last_mib']} / {memory['rss_max_mib']} |")
    if "overload" in results:
        overload = results["overload"]
        print(f"\noverload ({overload['clients']} clients, --max-queue 32, {overload['seconds']} s): "
              f"{overload['statuses']}, unanswered {overload['unanswered']}, RSS {overload['memory']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
