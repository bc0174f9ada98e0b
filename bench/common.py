"""What the bench scripts share, and nothing the library already has.

- The machine line (`machine_line`): CPU model, logical cores, the SIMD flags that matter for the kernels, torch's
  thread count (and the GPU, where there is one). Every script that prints or stores a machine description uses it.
- Timing: `interleaved` runs contenders A B, B A, ... (the order rotating every repeat) and `rounds` gives that order
  to loops that time something else; `fmt_times`, `median_min_max` and `mean_std` format the results.
- Data: `SHARED_DATA` (`../shared/data` beside the repository), the CoNLL-2003 + TweetEval tasks as
  configs/conll_tweeteval.yaml lists them (`task_entries`), and their tokenized splits through the library's
  `mtl_st.data.prepare` (`prepare`, `tokenize`).
- Training: the bench's Trainer defaults (`training_settings`), a seeded new model built as train.py builds one
  (`new_model`), and one "train a MultiTaskModel, score its test split" run (`train_and_score`, `scores`).

Scripts run as `python bench/<script>.py`, so `import common` finds this file; the project itself is installed.
Heavy imports (torch, transformers, the library) happen inside the functions, so that `--help` stays quick.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
TASKS_CONFIG = REPO / "configs" / "conll_tweeteval.yaml"
SPLIT_SEED = 42  # load_task_splits' default: the seed of any split carved from train (the library's, train.py's)
# Heads without data, for the speed benchmarks: a 3-label sentiment head and a 9-label CoNLL NER head.
HEAD_TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
    {"name": "ner", "type": "token_classification",
     "labels": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]},
]


# ----------------------------------------------------------------------------- the machine
def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, else `platform.processor()`)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for fp32 and int8 kernels, as /proc/cpuinfo lists them: avx, avx2, fma, every
    avx512*, the vnni and amx ones."""
    flags = (_cpuinfo_field("flags") or "").split()
    return [flag for flag in flags if flag in ("avx", "avx2", "fma") or flag.startswith(("avx512", "amx"))
            or "vnni" in flag]


def machine_line() -> str:
    """One line naming the machine: `[GPU; ]CPU model, N logical CPUs, flags ..., torch T threads`."""
    parts = [cpu_name(), f"{os.cpu_count()} logical CPUs", "flags " + (" ".join(cpu_flags()) or "unknown")]
    try:
        import torch
    except ImportError:
        return ", ".join(parts)
    line = ", ".join(parts + [f"torch {torch.get_num_threads()} threads"])
    return f"{torch.cuda.get_device_name(0)}; {line}" if torch.cuda.is_available() else line


# ----------------------------------------------------------------------------- timing
def rounds(names: Iterable[str], repeats: int) -> Iterator[list[str]]:
    """The interleaved order, one list per repeat: every name once, the order rotating by one each repeat
    (A B, B A, ... for two; A B C, B C A, C A B, ... for three), so no contender always runs first."""
    names = list(names)
    for repeat in range(repeats):
        shift = repeat % len(names)
        yield names[shift:] + names[:shift]


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0,
                synchronize: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Run each contender `warmup` times, then `repeats` rounds of all of them in `rounds` order; wall seconds per
    run. `synchronize` (e.g. `torch.cuda.synchronize`) is called before and after each timed run."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for order in rounds(contenders, repeats):
        for name in order:
            if synchronize is not None:
                synchronize()
            start = time.perf_counter()
            contenders[name]()
            if synchronize is not None:
                synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def fmt_times(values: Sequence[float], digits: int = 2) -> str:
    """`1.23, 1.25, 1.30`: every run, in order."""
    return ", ".join(f"{value:.{digits}f}" for value in values)


def median_min_max(values: Sequence[float], unit: str = "s", digits: int = 2) -> str:
    """`median 1.25 s (min 1.23, max 1.30)`."""
    return (f"median {statistics.median(values):.{digits}f} {unit} "
            f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})")


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """`87.3 ± 0.4`: mean ± sample standard deviation of `values` x `scale` (0 spread for one value; `–` for none)."""
    if not values:
        return "–"
    scaled = [scale * value for value in values]
    spread = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    return f"{statistics.mean(scaled):.{digits}f} ± {spread:.{digits}f}"


# ----------------------------------------------------------------------------- data
def rebase(entry: dict, shared_data: Path = SHARED_DATA) -> dict:
    """A task entry with its `data_files` as absolute paths: a path into `../shared/data` (relative to the repository
    root, as the configs write it) is re-rooted at `shared_data`; any other relative path is the repository's."""
    default = os.path.normpath(SHARED_DATA)
    files = {}
    for split, path in (entry.get("data_files") or {}).items():
        absolute = os.path.normpath(REPO / path)
        inside = os.path.relpath(absolute, default)
        files[split] = str(Path(shared_data) / inside) if not inside.startswith("..") else absolute
    return {**entry, "data_files": files} if files else dict(entry)


def read_task_list(path: Path, shared_data: Path = SHARED_DATA) -> list[dict]:
    """The task entries of a YAML file: a config's `tasks:` list, or a bare list (bench/stsb_task.yaml), rebased."""
    content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    entries = content.get("tasks") if isinstance(content, dict) else content
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a YAML list of task entries or a config with `tasks:`, "
                         f"got {type(content).__name__}")
    return [rebase(entry, shared_data) for entry in entries]


def task_entries(names: Sequence[str] | None = None, config: Path = TASKS_CONFIG,
                 shared_data: Path = SHARED_DATA) -> list[dict]:
    """CoNLL-2003 NER and TweetEval sentiment as configs/conll_tweeteval.yaml lists them (or another config's
    tasks, by name), their files under `shared_data`."""
    entries = read_task_list(config, shared_data)
    if names is None:
        return entries
    by_name = {entry["name"]: entry for entry in entries}
    return [by_name[name] for name in names]


def require(path: Path, what: str) -> None:
    """Stop with a one-line message when a data file the script needs is not there."""
    if not Path(path).exists():
        raise SystemExit(f"{what} not found at {path}: pass --shared-data (the folder that holds it)")


def prepare(entries: list[dict]):
    """`(specs, labels, splits)` of `mtl_st.data.prepare.prepare_data`: read, checked and split as train.py does
    (labels from each task's whole train split; splits carved from train with seed `SPLIT_SEED`)."""
    from mtl_st.data.prepare import prepare_data

    return prepare_data(entries, seed=SPLIT_SEED)


def tokenize(prepared, tokenizer, max_length: int, limits: dict[str, int | None],
             only: Sequence[str] | None = None) -> dict[str, dict]:
    """`{split: {task: tokenized rows}}` for the splits named in `limits` only (each cut to its first N rows; None:
    all), of every prepared task or those named in `only`: `mtl_st.data.prepare.tokenize_splits`."""
    from mtl_st.data.prepare import tokenize_splits

    specs, labels, splits = prepared
    specs = [spec for spec in specs if only is None or spec.name in only]
    wanted = {spec.name: {split: rows for split, rows in splits[spec.name].items() if split in limits}
              for spec in specs}
    tokenized = tokenize_splits(specs, labels, wanted, tokenizer, max_length, limits)
    return {split: tokenized[split] for split in limits}


def model_tasks(prepared) -> list[dict]:
    """The model config's task entries (names, types, label lists) of prepared tasks."""
    from mtl_st.data.prepare import model_tasks as tasks_of

    specs, labels, _ = prepared
    return tasks_of(specs, labels)


def load_texts(n: int | None, shared_data: Path = SHARED_DATA) -> tuple[list[str], Path]:
    """The first `n` texts (None: all) of the first file of real text found: TweetEval's test tweets, else the repo's
    own SST sample; the file it read."""
    from mtl_st.data.readers import read_json_rows

    candidates = [shared_data / "tweeteval_sentiment" / "test.jsonl", shared_data / "sst" / "test.jsonl"]
    local = REPO / "data" / "sst"
    if local.is_dir():
        candidates += sorted(local.glob("*.jsonl"))
    for path in candidates:
        if path.is_file():
            texts = [row["text"] for _, row in read_json_rows(str(path), "jsonl")
                     if isinstance(row.get("text"), str) and row["text"].strip()]
            if texts:
                return texts[:n] if n else texts, path
    tried = "\n  ".join(str(path) for path in candidates)
    raise SystemExit(f"no text found. Looked for JSON lines with a 'text' field in:\n  {tried}")


# ----------------------------------------------------------------------------- memory
def status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB: `VmRSS` (resident now) or `VmHWM` (the peak since the last reset)."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field))


def free_port() -> int:
    """A free TCP port on loopback (for a server a benchmark starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http(command: list[str], port: int, ready_path: str, what: str, limit_s: float, poll_s: float,
               env: dict | None = None):
    """Start `command` (a server on 127.0.0.1:`port`) and wait until GET `ready_path` answers 200.

    Returns (process, url, seconds to ready); a process that exits first, or is not ready within `limit_s`, is an
    error naming `what` (with the tail of its stderr)."""
    import subprocess

    import httpx

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < limit_s:
        if process.poll() is not None:
            raise RuntimeError(f"the {what} exited: {process.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return process, url, time.perf_counter() - started
        except httpx.HTTPError:
            time.sleep(poll_s)
    process.kill()
    raise RuntimeError(f"the {what} did not start in {limit_s:.0f} s")


def stop_process(process, wait_s: float) -> int:
    """SIGTERM, then SIGKILL after `wait_s`; the exit status."""
    import subprocess

    process.terminate()
    try:
        return process.wait(wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def reset_peak_rss() -> int:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; returns that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return status_kb("VmRSS")


# ----------------------------------------------------------------------------- models and training
def load_tokenizer(encoder: str = ENCODER):
    """The encoder's tokenizer, as train.py loads it (`mtl_st.training.build.load_tokenizer`)."""
    from transformers import AutoConfig

    from mtl_st.checkpoints import resolve_checkpoint
    from mtl_st.training.build import load_tokenizer as build_tokenizer

    return build_tokenizer(encoder, AutoConfig.from_pretrained(resolve_checkpoint(encoder)).model_type)


def new_model(tasks: list[dict], seed: int, encoder: str = ENCODER, **model_fields: Any):
    """A MultiTaskModel around `encoder` with fresh heads, seeded before the heads are built, made as train.py makes
    it (`mtl_st.training.build.build_model`); `model_fields` are train.py's `ModelArguments` fields
    (`normalize_embeddings`, `max_seq_length`, ...)."""
    from transformers import set_seed

    from mtl_st.training.build import build_model
    from train import ModelArguments

    set_seed(seed)
    return build_model(ModelArguments(model_name_or_path=encoder, **model_fields), tasks)


def training_settings(output_dir: str, seed: int, **overrides: Any) -> dict:
    """The bench's Trainer settings (no saving, no evaluation during training, no reports, the CPU unless there is
    a GPU), for `TrainingArguments` or `MultiTaskTrainingArguments`; `overrides` replace or add fields."""
    import torch

    settings = dict(output_dir=output_dir, seed=seed, per_device_eval_batch_size=64, weight_decay=0.01,
                    warmup_steps=0.1, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=50,
                    disable_tqdm=True, use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=False)
    return {**settings, **overrides}


def train_and_score(model, training_args, train: dict | None, test: dict, tokenizer, eval_dataset: dict | None = None):
    """Train `model` on `train` ({task: tokenized rows}; None: no training) with MultiTaskTrainer, then predict
    `test` ({task: tokenized rows}). Returns `(trainer, metrics)`: every `test_<task>_<metric>`, and with training
    `train_seconds` (the Trainer's train_runtime) and `train_samples` (rows x epochs)."""
    from mtl_st.data.sampling import MultiTaskDataset
    from trainer_mtl import MultiTaskTrainer

    trainer = MultiTaskTrainer(model=model, args=training_args, train_dataset=MultiTaskDataset(train) if train else None,
                               eval_dataset=eval_dataset, processing_class=tokenizer)
    trained = {}
    if train:
        trained["train_seconds"] = trainer.train().metrics["train_runtime"]
        trained["train_samples"] = sum(len(rows) for rows in train.values()) * training_args.num_train_epochs
    return trainer, {**trainer.predict(test).metrics, **trained}


SCORES = {"ner_f1": "test_ner_f1", "sentiment_accuracy": "test_sentiment_accuracy",
          "sentiment_macro_f1": "test_sentiment_macro_f1"}


def scores(metrics: dict) -> dict:
    """The CoNLL-2003 / TweetEval scores of a `train_and_score` run by their short names, with its training time
    and samples when it trained."""
    short = {name: metrics[key] for name, key in SCORES.items() if key in metrics}
    return {**short, **{key: metrics[key] for key in ("train_samples", "train_seconds") if key in metrics}}


def write_json(path: Path, content: Any) -> None:
    """Write `content` as indented JSON, making the folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


# ----------------------------------------------------------------------------- retrieval data
def trecqa_rows(split: str = "dev", shared_data: Path = SHARED_DATA) -> list[tuple[str, str, int]]:
    """TREC QA's `(question, candidate sentence, 0/1)` rows of a split (`qtext,label,atext` CSV), in file order."""
    from mtl_st.data.readers import read_csv_rows

    path = Path(shared_data) / "trecqa" / f"{split}.csv"
    require(path, f"TREC QA {split}")
    return [(row["qtext"], row["atext"], int(row["label"])) for _, row in read_csv_rows(str(path), "csv")]


def msrp_positives(shared_data: Path = SHARED_DATA) -> list[dict]:
    """MSRP's paraphrase pairs (train split, label 1) as `{"anchor", "positive"}`.

    MSRP's TSV has a byte-order mark, CRLF line ends and double quotes that are text, not CSV quoting, so it is read
    with quoting off."""
    import csv

    path = Path(shared_data) / "msrp" / "msr-para-train.tsv"
    require(path, "MSRP train")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [{"anchor": row[3], "positive": row[4]} for row in reader if row and row[0] == "1"]


def trecqa_triplets(shared_data: Path = SHARED_DATA, seed: int = 0) -> list[dict]:
    """TREC QA's correct (question, sentence) train rows as `{"anchor", "positive", "negative"}`, each with one of
    its question's wrong candidates as the hard negative (drawn with `seed`; a question without one gets none and is
    left out)."""
    import random

    rng = random.Random(seed)
    wrong: dict[str, list[str]] = {}
    rows = trecqa_rows("train", shared_data)
    for question, sentence, label in rows:
        if label == 0:
            wrong.setdefault(question, []).append(sentence)
    return [{"anchor": q, "positive": a, "negative": rng.choice(wrong[q])}
            for q, a, label in rows if label == 1 and wrong.get(q)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """`rows` as JSON lines at `path` (outside the repository: the shared data sets may not be copied into it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def retrieval_pairs(out: Path, shared_data: Path = SHARED_DATA, seed: int = 0) -> Path:
    """The retrieval benchmark's training pairs as JSON lines `{"anchor", "positive"}`: MSRP's paraphrase pairs
    and TREC QA's correct (question, sentence) train rows, shuffled together with `seed`, written to `out`."""
    import random

    pairs = msrp_positives(shared_data)
    pairs += [{"anchor": q, "positive": a} for q, a, label in trecqa_rows("train", shared_data) if label == 1]
    random.Random(seed).shuffle(pairs)
    return write_jsonl(out, pairs)
