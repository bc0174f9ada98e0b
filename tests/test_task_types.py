"""Task types as objects: the four new types' losses, metrics and pipeline answers, `evaluate` metrics, the
sentence-similarity type (CoSENT, Spearman, eval-only), a YAML with every type, and cross-validation."""

from __future__ import annotations

import csv
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import EvalPrediction

from conftest import REPO, SHARED_DATA, TINY_ENCODERS, tiny_model
from data_mtl import DataError, TaskDataArguments, load_task_splits, tokenize_task
from pipeline_mtl import MultiTaskPipeline
from sampling_mtl import MultiTaskCollator, MultiTaskDataset
from task_data_mtl import TaskMetrics, get_task_data
from tasks_mtl import TASK_TYPES, cosent_loss

FIXTURES = Path(__file__).resolve().parent / "fixtures"

ALL_TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "positive"]},
    {"name": "ner", "type": "token_classification", "labels": ["O", "B-PER", "I-PER"]},
    {"name": "nli", "type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
    {"name": "topics", "type": "multi_label_classification", "labels": ["food", "sport", "travel"], "threshold": 0.4},
    {"name": "stars", "type": "regression"},
    {"name": "sts", "type": "sentence_similarity"},
]


# ---------------------------------------------------------------------------------------------------------------
# Losses against hand computations
# ---------------------------------------------------------------------------------------------------------------


def test_cosent_loss_matches_a_hand_computation():
    cosines = torch.tensor([0.9, 0.2, 0.5])
    scores = torch.tensor([5.0, 1.0, 3.0])
    # Ordered pairs with score_i > score_j: (0,1), (0,2), (2,1); each adds exp(20 * (cos_j - cos_i)).
    terms = [20 * (0.2 - 0.9), 20 * (0.5 - 0.9), 20 * (0.2 - 0.5)]
    expected = np.log(1 + sum(np.exp(t) for t in terms))
    assert cosent_loss(cosines, scores).item() == pytest.approx(expected, rel=1e-4)
    # Wrongly ordered cosines cost more; ties in the gold scores add nothing.
    assert cosent_loss(torch.tensor([0.2, 0.9, 0.5]), scores) > cosent_loss(cosines, scores)
    assert cosent_loss(cosines, torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_cosent_equals_sentence_transformers_cosent():
    st_losses = pytest.importorskip("sentence_transformers.losses")
    torch.manual_seed(0)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7, 0.0])
    cosines = torch.nn.functional.cosine_similarity(a, b)

    class Stub(torch.nn.Module):  # CoSENTLoss.compute_loss_from_embeddings needs no model
        pass

    reference = st_losses.CoSENTLoss(Stub()).compute_loss_from_embeddings([a, b], scores)
    assert cosent_loss(cosines, scores).item() == pytest.approx(reference.item(), rel=1e-5)


def test_new_types_losses_on_a_tiny_encoder():
    model = tiny_model(tasks=ALL_TASKS)
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    out = model(ids, mask, task="topics", labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.tensor([[1.0, 0, 1], [0, 0, 0]]))
    assert out.logits.shape == (2, 3) and out.loss.item() == pytest.approx(expected.item(), rel=1e-6)

    out = model(ids, mask, task="stars", labels=torch.tensor([2.0, 4.5]))
    assert out.logits.shape == (2, 1)
    mse = ((out.logits[:, 0] - torch.tensor([2.0, 4.5])) ** 2).mean().item()
    assert out.loss.item() == pytest.approx(mse, rel=1e-6)

    out = model(ids, mask, task="nli", labels=torch.tensor([2, 0]))
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([2, 0])).item())

    pair = torch.tensor([[101, 2003, 102, 0], [101, 2000, 2001, 102]])
    out = model(ids, mask, task="sts", labels=torch.tensor([1.0, 3.0]), pair_input_ids=pair,
                pair_attention_mask=(pair != 0).long())
    first, second = model.embed(ids, mask), model.embed(pair, (pair != 0).long())
    assert torch.allclose(out.logits, torch.nn.functional.cosine_similarity(first, second), atol=1e-6)
    assert out.loss.item() == pytest.approx(cosent_loss(out.logits, torch.tensor([1.0, 3.0])).item(), rel=1e-6)
    assert "sts" not in model.heads  # no head: the similarity is the embeddings' cosine

    with pytest.raises(ValueError, match="multi-hot"):
        model(ids, mask, task="topics", labels=torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="'sts'.*pair_input_ids"):
        model(ids, mask, task="sts", labels=torch.tensor([1.0, 3.0]))


def test_config_validates_each_type():
    from configuration_mtl import MultiTaskConfig

    encoder = TINY_ENCODERS["bert"]
    with pytest.raises(ValueError, match="'stars' is a regression task, which takes no `labels`"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "stars", "type": "regression", "labels": ["a"]}])
    with pytest.raises(ValueError, match="'topics'.*threshold"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "topics", "type": "multi_label_classification",
                                                      "labels": ["a"], "threshold": 2}])
    with pytest.raises(ValueError, match="'ner'.*'PER' is not a BIO tag"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "ner", "type": "token_classification",
                                                      "labels": ["O", "PER"]}])
    config = MultiTaskConfig(encoder=dict(encoder), tasks=[dict(task) for task in ALL_TASKS])
    assert config.get_task("topics")["threshold"] == 0.4 and config.get_task("sts")["scale"] == 20.0


# ---------------------------------------------------------------------------------------------------------------
# Metrics against hand computations
# ---------------------------------------------------------------------------------------------------------------


def test_similarity_metric_matches_a_hand_computation():
    cosines = np.array([0.9, 0.1, 0.5, 0.3])
    gold = np.array([4.0, 1.0, 2.0, 3.0])
    metrics = get_task_data("sentence_similarity").metrics({"name": "sts"}, cosines, gold)
    # Ranks of cosines [4, 1, 3, 2] and of gold [4, 1, 2, 3]: d = [0, 0, 1, -1], rho = 1 - 6*2 / (4*15) = 0.8.
    assert metrics["spearman"] == pytest.approx(0.8)
    centred_c, centred_g = cosines - cosines.mean(), gold - gold.mean()
    pearson = (centred_c @ centred_g) / np.sqrt((centred_c @ centred_c) * (centred_g @ centred_g))
    assert metrics["pearson"] == pytest.approx(pearson)


def test_similarity_metric_equals_sentence_transformers_evaluator(tokenizer):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_model(tasks=[ALL_TASKS[5]])
    model.tokenizer = tokenizer
    first = ["A man plays a guitar.", "A cat sleeps.", "Kids play football.", "The stock fell.", "Rain all day."]
    second = ["Someone plays music.", "A dog barks.", "Children play a game.", "Shares dropped.", "It is sunny."]
    scores = [4.2, 0.8, 3.9, 4.5, 1.1]
    a, b = model.encode(first), model.encode(second)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ours = get_task_data("sentence_similarity").metrics({"name": "sts"}, cosines, np.array(scores))

    folder = REPO / "runs" / "_st_eval_tmp"
    model.save_sentence_transformer(folder, tokenizer)
    evaluator = EmbeddingSimilarityEvaluator(first, second, [s / 5 for s in scores])
    reference = evaluator(st.SentenceTransformer(str(folder), device="cpu"))
    assert ours["spearman"] == pytest.approx(reference[evaluator.primary_metric], abs=1e-6)


def test_multi_label_and_regression_metrics():
    logits = np.array([[2.0, -1.0, 0.1], [-2.0, 3.0, -0.3], [0.5, 0.5, -4.0]])  # sigmoid >= 0.5 where logit >= 0
    gold = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    metrics = get_task_data("multi_label_classification").metrics({"threshold": 0.5}, logits, gold)
    # Predicted [[1,0,1],[0,1,0],[1,1,0]]: TP 3, FP 2, FN 1 -> micro F1 = 6 / (6 + 3) = 2/3.
    assert metrics["micro_f1"] == pytest.approx(2 / 3)
    # Per label F1: food 2/2 -> 1.0; sport TP1 FP1 -> 2/3; travel TP0 FP1 FN1 -> 0.
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)

    metrics = get_task_data("regression").metrics({}, np.array([[1.0], [2.0], [2.5]]), np.array([1.0, 3.0, 2.0]))
    assert metrics["mse"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert metrics["spearman"] == pytest.approx(0.5)
    assert set(metrics) == {"pearson", "spearman", "mse"}


def test_local_evaluate_metric_replaces_the_built_in_one():
    pytest.importorskip("evaluate")
    metrics = TaskMetrics([ALL_TASKS[0]], {"sentiment": str(FIXTURES / "metrics" / "exact_match_local")})
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    result = metrics(EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 1])), "sentiment")
    assert result == {"exact_match": pytest.approx(2 / 3), "n": 3.0}
    with pytest.raises(DataError, match="'sentiment'.*cannot load the metric"):
        TaskMetrics([ALL_TASKS[0]], {"sentiment": str(FIXTURES / "no-such-metric")})(
            EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 1])), "sentiment")


# ---------------------------------------------------------------------------------------------------------------
# Data: reading, tokenisation, collation of the new types
# ---------------------------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_similarity_csv_without_header_and_bad_rows(tmp_path):
    good = tmp_path / "sts.csv"
    good.write_text('A man plays.,"Someone, playing.",4.5\nA cat.,A dog.,0.5\n', encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(good)},
                             format="csv", column_names=["sentence1", "sentence2", "score"])
    splits = load_task_splits(task)
    assert list(splits) == ["validation"]  # eval-only: no train split, nothing carved
    assert splits["validation"][0] == {"text": "A man plays.", "text_pair": "Someone, playing.", "label": 4.5}

    bad = tmp_path / "bad.csv"
    bad.write_text("sentence1,sentence2,score\nA,B,4.0\nC,D,high\n", encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(bad)})
    with pytest.raises(DataError, match=re.escape(f"task 'sts': {bad}:3: column 'score'") + ".*expected a number"):
        load_task_splits(task)
    missing = tmp_path / "missing.csv"
    missing.write_text("sentence1,score\nA,4.0\n", encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(missing)})
    with pytest.raises(DataError, match=re.escape(f"column 'sentence2' not found in {missing}:2")):
        load_task_splits(task)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\nfine,pos\n", encoding="utf-8")
    with pytest.raises(DataError, match="'s': no train split.*except sentence_similarity"):
        load_task_splits(TaskDataArguments(name="s", type="sequence_classification",
                                           data_files={"validation": str(labelled)}))


def test_pair_multilabel_and_similarity_batches(tmp_path, tokenizer):
    rows = {
        "nli": [{"text": "A man sleeps.", "text_pair": "Nobody sleeps.", "label": "contradiction"}] * 2,
        "topics": [{"text": "Pasta at the stadium.", "labels": ["food", "sport"]}, {"text": "x", "labels": []}],
        "sts": [{"sentence1": "A cat.", "sentence2": "A small cat sits.", "score": 4.0}] * 2,
    }
    datasets = {}
    for task in ALL_TASKS[2:4] + ALL_TASKS[5:]:
        path = write_rows(tmp_path / f"{task['name']}.jsonl", rows[task["name"]])
        spec = TaskDataArguments(name=task["name"], type=task["type"], validation_split_fraction=0,
                                 test_split_fraction=0, data_files={"train": path})
        label2id = {label: i for i, label in enumerate(task.get("labels", []))}
        datasets[task["name"]] = tokenize_task(load_task_splits(spec)["train"], spec, tokenizer, label2id, 32)
    collator = MultiTaskCollator(tokenizer, {t["name"]: t["type"] for t in ALL_TASKS})
    data = MultiTaskDataset(datasets)

    nli = collator([data[0], data[1]])
    assert nli["labels"].tolist() == [2, 2] and nli["labels"].dtype == torch.long
    assert tokenizer.decode(nli["input_ids"][0], skip_special_tokens=True) == "a man sleeps. nobody sleeps."
    assert nli["token_type_ids"][0].tolist().count(1) > 0  # the pair is one joint encoding
    topics = collator([data[2], data[3]])
    assert topics["labels"].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]] and topics["labels"].dtype == torch.float32
    sts = collator([data[4], data[5]])
    assert sts["labels"].tolist() == [4.0, 4.0] and sts["pair_input_ids"].shape[1] > sts["input_ids"].shape[1]
    model = tiny_model(tasks=ALL_TASKS)
    assert model(**{k: v for k, v in sts.items() if k != "task"}, task="sts").loss is not None


# ---------------------------------------------------------------------------------------------------------------
# Pipeline answers
# ---------------------------------------------------------------------------------------------------------------


def test_pipeline_answers_every_type(tokenizer):
    model = tiny_model(tasks=ALL_TASKS)
    pipe = MultiTaskPipeline(model=model, tokenizer=tokenizer)
    answer = pipe("Emma had pasta in Rome.")
    assert set(answer) == {"sentiment", "ner", "topics", "stars"}  # single-text tasks
    assert set(answer["sentiment"]) == {"label", "score"}
    assert isinstance(answer["ner"], list)
    assert all(entry["score"] >= 0.4 for entry in answer["topics"])
    with torch.no_grad():
        ids = tokenizer("Emma had pasta in Rome.", return_tensors="pt")
        out = model(**ids)
    probabilities = torch.sigmoid(out.task_logits["topics"][0])
    assert [entry["label"] for entry in answer["topics"]] == [
        ALL_TASKS[3]["labels"][i] for i in torch.argsort(-probabilities).tolist() if probabilities[i] >= 0.4]
    assert answer["stars"]["score"] == pytest.approx(out.task_logits["stars"][0, 0].item(), abs=1e-5)

    pair = pipe({"text": "A man plays a guitar.", "text_pair": "Someone makes music."})
    assert set(pair) == {"nli", "sts"}
    assert set(pair["nli"]) == {"label", "score"}
    first, second = model.encode(["A man plays a guitar.", "Someone makes music."], tokenizer=tokenizer)
    cosine = first @ second / np.linalg.norm(first) / np.linalg.norm(second)
    assert pair["sts"]["score"] == pytest.approx(float(cosine), abs=1e-5)
    with pytest.raises(TypeError, match="pair must be"):
        pipe({"text": "a"})


# ---------------------------------------------------------------------------------------------------------------
# Architecture guards
# ---------------------------------------------------------------------------------------------------------------


def test_no_type_dispatch_outside_the_task_type_classes():
    pattern = re.compile(r'== "(token|sequence)_classification"')
    offenders = [f"{path.name}:{n}" for path in REPO.glob("*.py") for n, line in
                 enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_modeling_imports_without_pipeline_or_card(tmp_path):
    """No import cycle: the model files load where the pipeline and card files are absent."""
    for name in ("configuration_mtl.py", "modeling_mtl.py", "tasks_mtl.py", "postprocess_mtl.py"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    code = "import modeling_mtl, sys; assert 'pipeline_mtl' not in sys.modules and 'modelcard_mtl' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr


def test_get_batch_samples_contract_with_the_trainer():
    """`MultiTaskTrainer.get_batch_samples` is not a documented hook: pin how transformers calls it and uses it."""
    from transformers import Trainer

    source = inspect.getsource(Trainer)
    assert "self.get_batch_samples(epoch_iterator, num_batches, self.args.device)" in source
    assert "num_items_in_batch" in inspect.signature(Trainer.compute_loss).parameters
    assert list(inspect.signature(Trainer.get_batch_samples).parameters) == ["self", "epoch_iterator", "num_batches",
                                                                             "device"]
    assert "num_items_in_batch" in inspect.signature(Trainer.training_step).parameters
    # `_clip_grad_norm` (scaled by the window's task weight) is private too: pin that it clips before the step.
    assert list(inspect.signature(Trainer._clip_grad_norm).parameters) == ["self", "model"]
    loop = inspect.getsource(Trainer._run_epoch)  # the body of `_inner_training_loop`'s epoch loop
    assert loop.index("grad_norm = self._clip_grad_norm(model)") < loop.index("self.optimizer.step()")


def test_trainer_does_not_write_into_accelerate_objects():
    source = (REPO / "trainer_mtl.py").read_text(encoding="utf-8")
    assert ".num_processes =" not in source and ".process_index =" not in source


# ---------------------------------------------------------------------------------------------------------------
# train.py: one task of every type; cross-validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm) -> str:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(**TINY_ENCODERS["bert"])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return str(folder)


def every_type_config(tmp_path: Path, encoder: str) -> dict:
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


def test_yaml_with_every_type_trains_evaluates_and_predicts(tmp_path, tiny_encoder):
    import train

    config_path = tmp_path / "all.yaml"
    config_path.write_text(yaml.safe_dump(every_type_config(tmp_path, tiny_encoder)), encoding="utf-8")
    assert train.cli([str(config_path)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    for task in ALL_TASKS:
        name = {"nli": "nli", "topics": "topics", "stars": "stars"}.get(task["name"], task["name"])
        for metric in TASK_TYPES[task["type"]].metric_names:
            for prefix in ("eval", "test"):
                assert f"{prefix}_{name}_{metric}" in results, f"{prefix}_{name}_{metric}"
    from transformers import pipeline

    pipe = pipeline("multitask", model=str(tmp_path / "run"))
    single, pair = pipe("Emma likes Rome"), pipe({"text": "good film", "text_pair": "bad film"})
    assert set(single) == {"sentiment", "ner", "topics", "stars"} and set(pair) == {"nli", "sts"}
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert "| sts | sentence_similarity | — |" in card and "type: spearman" in card


def test_cross_validation_on_the_quickstart_data(tmp_path, tiny_encoder):
    import train

    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    config.update({"model_name_or_path": tiny_encoder, "output_dir": str(tmp_path / "cv"), "cross_validation_folds": 3,
                   "max_train_samples": 30, "max_eval_samples": 20, "max_steps": 4, "save_strategy": "no",
                   "eval_strategy": "no", "report_to": "none", "show_examples": None, "use_cpu": True,
                   "logging_strategy": "no"})
    config = {key: value for key, value in config.items() if key not in ("load_best_model_at_end",
                                                                         "metric_for_best_model")}
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert train.cli([str(path)]) == 0
    summary = json.loads((tmp_path / "cv" / "cv_results.json").read_text())
    assert summary["folds"] == 3
    for key in ("eval_sentiment_accuracy", "eval_ner_f1", "eval_loss"):
        entry = summary["metrics"][key]
        assert len(entry["per_fold"]) == 3
        assert entry["mean"] == pytest.approx(np.mean(entry["per_fold"]))
        assert entry["std"] == pytest.approx(np.std(entry["per_fold"], ddof=1))
    assert all((tmp_path / "cv" / f"fold-{k}" / "model.safetensors").exists() for k in range(3))
    assert not any(key.startswith("test_") for key in summary["metrics"])


@pytest.mark.skipif(not (SHARED_DATA / "stsb" / "dev.csv").exists(), reason="needs ../shared/data/stsb")
def test_eval_only_similarity_monitor_on_stsb(tmp_path, minilm, tokenizer):
    """A similarity task with no train split is only evaluated; on the base MiniLM it gives the published figure."""
    from modeling_mtl import MultiTaskModel
    from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

    spec = TaskDataArguments(name="stsb", type="sentence_similarity", format="csv",
                             column_names=["sentence1", "sentence2", "score"],
                             data_files={"validation": str(SHARED_DATA / "stsb" / "dev.csv")})
    validation = load_task_splits(spec)["validation"].select(range(300))
    model = MultiTaskModel.from_encoder(str(minilm), tasks=[{"name": "stsb", "type": "sentence_similarity"}])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                      per_device_eval_batch_size=64)
    trainer = MultiTaskTrainer(model=model, args=args, processing_class=tokenizer,
                               eval_dataset={"stsb": tokenize_task(validation, spec, tokenizer, {}, 256)})
    metrics = trainer.evaluate()
    a = model.encode(validation["text"], tokenizer=tokenizer)
    b = model.encode(validation["text_pair"], tokenizer=tokenizer)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    from scipy.stats import spearmanr

    assert metrics["eval_stsb_spearman"] == pytest.approx(spearmanr(validation["label"], cosines)[0], abs=1e-4)
    assert 0.8 < metrics["eval_stsb_spearman"] < 0.95


@pytest.mark.skipif(
    not (SHARED_DATA / "sst" / "train.jsonl").exists() or not (SHARED_DATA / "stsb" / "train.csv").exists(),
    reason="needs ../shared/data/sst and ../shared/data/stsb",
)
def test_real_data_regression_pairs_and_classes(tmp_path, tiny_encoder):
    """SST's 5-class fine label as a regression target and its 3-class label as classes; STS-B pairs with score >= 4
    as "paraphrase" (built here from ../shared/data, never copied into the repository)."""
    import train

    fine = {"very negative": 0.0, "negative": 1.0, "neutral": 2.0, "positive": 3.0, "very positive": 4.0}
    with open(SHARED_DATA / "sst" / "train.jsonl", encoding="utf-8") as handle:
        sst = [json.loads(line) for line in handle][:240]
    stars = write_rows(tmp_path / "stars.jsonl", [{"text": r["text"], "label": fine[r["fine_label"]]} for r in sst])
    classes = write_rows(tmp_path / "classes.jsonl", [{"text": r["text"], "label": r["label"]} for r in sst])
    with open(SHARED_DATA / "stsb" / "train.csv", encoding="utf-8", newline="") as handle:
        pairs = [{"text": a, "text_pair": b, "label": "paraphrase" if float(s) >= 4 else "other"}
                 for a, b, s in list(csv.reader(handle))[:240]]
    paraphrase = write_rows(tmp_path / "pairs.jsonl", pairs)
    config = {
        "model_name_or_path": tiny_encoder, "output_dir": str(tmp_path / "run"), "do_train": True, "do_eval": True,
        "tasks": [{"name": "stars", "type": "regression", "data_files": {"train": stars}},
                  {"name": "sentiment", "type": "sequence_classification", "data_files": {"train": classes}},
                  {"name": "paraphrase", "type": "pair_classification", "data_files": {"train": paraphrase}}],
        "max_steps": 9, "per_device_train_batch_size": 8, "task_sampling": "round_robin", "report_to": "none",
        "save_strategy": "no", "use_cpu": True, "learning_rate": 1e-3,
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert train.cli([str(path)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert {"eval_stars_pearson", "eval_stars_spearman", "eval_stars_mse", "eval_sentiment_accuracy",
            "eval_paraphrase_accuracy", "eval_paraphrase_macro_f1"} <= set(results)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [t["labels"] for t in saved["tasks"] if t["name"] == "sentiment"] == [["negative", "neutral", "positive"]]
    assert [t.get("labels") for t in saved["tasks"] if t["name"] == "stars"] == [None]


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    state = {"log_history": [{"step": 1, "loss": 1.0, "loss_a": 1.0}, {"step": 2, "eval_a_accuracy": 0.5}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    code = ("import matplotlib; matplotlib.use('svg'); import plot_mtl; "
            f"plot_mtl.plot_run({str(tmp_path)!r}); assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "training_curves.png").stat().st_size > 0


def test_internal_errors_keep_their_traceback(monkeypatch, capsys):
    import train

    def broken(argv):
        raise ValueError("an internal bug")

    monkeypatch.setattr(train, "main", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        train.cli(["x.yaml"])

    def bad_input(argv):
        raise DataError("task 'x': bad row")

    monkeypatch.setattr(train, "main", bad_input)
    assert train.cli(["x.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: task 'x': bad row"


def test_train_starts_from_a_saved_model_with_its_own_or_the_configs_pooling(tmp_path, tokenizer):
    import train

    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "positive"]}]
    saved = tiny_model(tasks=tasks, pooling="cls", normalize_embeddings=True, max_seq_length=64)
    saved.save_pretrained(tmp_path / "saved")
    kept = train.build_model(train.ModelArguments(model_name_or_path=str(tmp_path / "saved")), tasks)
    assert (kept.config.pooling, kept.pooling.mode, kept.config.normalize_embeddings) == ("cls", "cls", True)
    changed = train.build_model(train.ModelArguments(model_name_or_path=str(tmp_path / "saved"), pooling="mean",
                                                     normalize_embeddings=False, max_seq_length=32), tasks)
    assert (changed.config.pooling, changed.pooling.mode, changed.config.normalize_embeddings) == ("mean", "mean", False)
    assert changed.config.max_seq_length == 32


def test_train_passes_max_seq_length_to_a_new_model(tiny_encoder):
    import train

    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["a", "b"]}]
    model = train.build_model(train.ModelArguments(model_name_or_path=tiny_encoder, max_seq_length=48), tasks)
    assert model.config.max_seq_length == 48


def test_torch_free_type_sets_agree_with_the_task_type_classes():
    from postprocess_mtl import ANSWERS, HEADLESS_TYPES, PAIR_TYPES

    assert set(ANSWERS) == set(TASK_TYPES)
    assert HEADLESS_TYPES == {name for name, t in TASK_TYPES.items() if not t.has_head}
    assert PAIR_TYPES == {name for name, t in TASK_TYPES.items() if t.takes_pair}
