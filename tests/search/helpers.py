"""Small search configs on a tiny encoder and the bundled samples (the search tests' own helpers)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mtl_st.data.readers import read_conll
from tests.utils import REPO


def search_data(folder: Path) -> dict:
    """The first rows of the bundled SST and WNUT-17 samples, and the similarity pairs, copied into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    sst = (REPO / "data" / "sst" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    (folder / "sst.jsonl").write_text("\n".join(sst) + "\n", encoding="utf-8")
    sentences = read_conll(REPO / "data" / "wnut17" / "train.conll")[:24]
    (folder / "ner.conll").write_text("\n\n".join("\n".join(f"{word}\t{tag}" for word, tag in
                                                          zip(row["tokens"], row["tags"])) for row in sentences)
                                      + "\n", encoding="utf-8")
    pairs = (REPO / "data" / "similarity" / "pairs.csv").read_text(encoding="utf-8")
    (folder / "pairs.csv").write_text(pairs, encoding="utf-8")
    return {"sst": str(folder / "sst.jsonl"), "ner": str(folder / "ner.conll"), "pairs": str(folder / "pairs.csv")}


def search_config(tmp_path: Path, data: dict, block: dict, **fields) -> dict:
    """A run on the tiny encoder (train and validation: the same rows), with the search block `block`."""
    config = {
        "model_name_or_path": data["encoder"],
        "tasks": [
            {"name": "sentiment", "type": "sequence_classification",
             "data_files": {"train": data["sst"], "validation": data["sst"], "test": data["sst"]}},
            {"name": "ner", "type": "token_classification", "format": "conll",
             "data_files": {"train": data["ner"], "validation": data["ner"], "test": data["ner"]}},
            {"name": "similarity", "type": "sentence_similarity",
             "data_files": {"validation": data["pairs"], "test": data["pairs"]}},
        ],
        "output_dir": str(tmp_path / "search"), "do_train": True, "do_eval": True, "do_predict": True,
        "max_steps": 6, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32,
        "learning_rate": 1.0e-3, "head_learning_rate": 1.0e-2, "eval_strategy": "no", "save_strategy": "no",
        "report_to": "none", "use_cpu": True, "seed": 3, "logging_steps": 3, "disable_tqdm": True,
        "hyperparameter_search": {"n_trials": 2, "seed": 0, "objective": "eval_ner_f1", **block},
    }
    config.update(fields)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
