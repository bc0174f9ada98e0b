"""The search's checks and choices, without training: a bad block is refused before any model loads, and selection
reads validation metrics only and respects constraints (trials run through a stand-in for `train.run`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest

import train
from mtl_st.data.prepare import prepare_data
from mtl_st.errors import DataError
from mtl_st.search.runner import PruningCallback, run_search
from tests.search.helpers import search_config, write_yaml


@pytest.mark.parametrize("block, field", [
    ({"space": {"learnin_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}}, "hyperparameter_search.space.learnin_rate: unknown field"),
    ({"space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-3}}}, "hyperparameter_search.space.learning_rate: empty range"),
    ({"space": {"learning_rate": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}}, "hyperparameter_search.space.learning_rate: `log: true` needs bounds above 0"),
    ({"space": {"learning_rate": {"type": "categorical", "choices": ["fast", "slow"]}}}, "hyperparameter_search.space.learning_rate: 'learning_rate' is a number"),
    ({"space": {"task_loss_weights.pos": {"type": "float", "low": 0.5, "high": 2.0}}}, "hyperparameter_search.space.task_loss_weights.pos: no task is called 'pos'"),
    ({"space": {"task_sampling": {"type": "float", "low": 0.5, "high": 2.0}}}, "hyperparameter_search.space.task_sampling: 'task_sampling' takes a string"),
    ({"space": {"task_sampling": {"type": "categorical", "choices": ["proportional", "shuffled"]}}}, "hyperparameter_search.space.task_sampling: the value 'shuffled' is refused"),
    ({"space": {"learning_rate": {"type": "float", "low": -1.0, "high": 1e-3}}}, "hyperparameter_search.space.learning_rate: the value -1.0 is refused"),
    ({"space": {"output_dir": {"type": "categorical", "choices": ["a", "b"]}}}, "hyperparameter_search.space.output_dir: 'output_dir' cannot be searched"),
    ({"objective": "test_ner_f1"}, "hyperparameter_search.objective: test_ner_f1 is a test metric"),
    ({"objective": "eval_ner_f2"}, "hyperparameter_search.objective: 'eval_ner_f2' is not a metric this run reports"),
    ({"objective": "eval_loss", "direction": "maximize"}, "hyperparameter_search.direction: eval_loss is better when smaller"),
    ({"constraints": ["eval_similarity_spearman => 0.5"]}, "hyperparameter_search.constraints: 'eval_similarity_spearman => 0.5' is not"),
    ({"sampler": "grid", "grid": {"learning_rate": []}}, "hyperparameter_search.grid.learning_rate must be a non-empty list"),
    ({"pruner": "median"}, "hyperparameter_search.pruner needs evaluations during training"),
    ({"n_trial": 3}, "hyperparameter_search: unknown key 'n_trial'. Did you mean 'n_trials'"),
])
def test_a_bad_block_is_refused_before_training_in_one_line(block, field, tmp_path, search_data, capsys, monkeypatch):
    base = {"space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    config = search_config(tmp_path, search_data, {**base, **block})
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    assert train.cli([str(write_yaml(tmp_path / "bad.yaml", config))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: " + field), lines[-1]
    assert not (tmp_path / "search" / "hp_search.db").exists()


def test_command_line_sets_one_key_of_the_block(tmp_path, search_data):
    config = search_config(tmp_path, search_data, {"space": {"seed": {"type": "int", "low": 1, "high": 3}}})
    path = write_yaml(tmp_path / "c.yaml", config)
    _, data_args, _ = train.parse_args([str(path), "--hyperparameter_search.n_trials", "7",
                                        "--hyperparameter_search.sampler=random"])
    assert data_args.hyperparameter_search["n_trials"] == 7 and data_args.hyperparameter_search["sampler"] == "random"
    assert data_args.hyperparameter_search["space"] == {"seed": {"type": "int", "low": 1, "high": 3}}
    with pytest.raises(DataError, match="--hyperparameter_search.n_trails: unknown key. Did you mean 'n_trials'"):
        train.parse_args([str(path), "--hyperparameter_search.n_trails", "7"])


class StandIn:
    """Runs instead of `train.run`: metrics from a table of the trial's learning rate; records every call."""

    def __init__(self, table: dict[float, dict[str, float]]):
        self.table, self.calls = table, []

    def __call__(self, model_args, data_args, training_args, splits, callbacks):
        self.calls.append({"lr": training_args.learning_rate, "do_predict": training_args.do_predict,
                           "output_dir": training_args.output_dir})
        metrics = dict(self.table[training_args.learning_rate])
        if not training_args.do_predict:  # what a real run reports without a test split: no test_* key
            metrics = {k: v for k, v in metrics.items() if not k.startswith("test_")}
        return metrics


def search_with(tmp_path, search_data, block: dict, table: dict, cv_folds: int | None = None):
    config = search_config(tmp_path, search_data, {"sampler": "grid", "grid": {"learning_rate": sorted(table)},
                                                   "n_trials": len(table), **block})
    model_args, data_args, training_args = train.parse_args([str(write_yaml(tmp_path / "s.yaml", config))])
    data_args.cross_validation_folds = cv_folds
    specs, labels, splits = prepare_data(data_args.tasks, training_args.seed)
    stand_in = StandIn(table)
    report = run_search(data_args.hyperparameter_search, {}, train.PARSER_CLASSES, model_args, data_args,
                        training_args, specs, splits, stand_in, config, {"base": 1})
    return report, stand_in


def metrics(ner: float, spearman: float, test_ner: float) -> dict[str, float]:
    return {"eval_ner_f1": ner, "eval_similarity_spearman": spearman, "eval_sentiment_accuracy": 0.5,
            "test_ner_f1": test_ner}


def test_selection_reads_validation_metrics_and_respects_constraints(tmp_path, search_data):
    table = {1e-4: metrics(0.30, 0.90, test_ner=0.90),   # the best test score: a selection reading test picks it
             2e-4: metrics(0.60, 0.80, test_ner=0.10),   # the best validation score, but it breaks the constraint
             3e-4: metrics(0.50, 0.86, test_ner=0.20)}   # the best validation score that meets the constraint
    report, stand_in = search_with(tmp_path, search_data, {"constraints": ["eval_similarity_spearman >= 0.85"]}, table)
    assert report["best"]["params"] == {"learning_rate": 3e-4}
    trials = {t["params"]["learning_rate"]: t for t in report["trials"]}
    assert trials[2e-4]["feasible"] is False and trials[3e-4]["feasible"] is True
    assert [call["do_predict"] for call in stand_in.calls] == [False, False, False, True]  # test: once, for best/
    assert stand_in.calls[-1]["lr"] == 3e-4 and stand_in.calls[-1]["output_dir"].endswith("best")
    assert report["best_test_metrics"] == {"test_ner_f1": 0.20}
    saved = json.loads((tmp_path / "search" / "hp_search.json").read_text())
    assert saved["best"]["trial"] == report["best"]["trial"]


def test_several_objectives_give_the_pareto_front(tmp_path, search_data):
    table = {1e-4: metrics(0.30, 0.90, 0), 2e-4: metrics(0.60, 0.80, 0), 3e-4: metrics(0.20, 0.70, 0)}
    report, _ = search_with(tmp_path, search_data, {"objective": ["eval_ner_f1", "eval_similarity_spearman"]}, table)
    front = sorted(entry["params"]["learning_rate"] for entry in report["best"])
    assert front == [1e-4, 2e-4]  # 3e-4 is dominated by both
    assert report["directions"] == ["maximize", "maximize"]


def test_cross_validation_objective_is_the_fold_mean(tmp_path, search_data):
    class PerFold(StandIn):
        def __call__(self, model_args, data_args, training_args, splits, callbacks):
            fold = int(str(training_args.output_dir).rsplit("fold-", 1)[1]) if "fold-" in str(
                training_args.output_dir) else 0
            self.calls.append({"lr": training_args.learning_rate, "do_predict": training_args.do_predict})
            return {"eval_ner_f1": 0.1 * (fold + 1) + training_args.learning_rate, "eval_similarity_spearman": 0.9,
                    "eval_sentiment_accuracy": 0.5}

    config = search_config(tmp_path, search_data, {"sampler": "grid", "grid": {"learning_rate": [0.0, 0.5]},
                                                   "n_trials": 2})
    model_args, data_args, training_args = train.parse_args([str(write_yaml(tmp_path / "cv.yaml", config))])
    data_args.cross_validation_folds = 3
    specs, labels, splits = prepare_data(data_args.tasks, training_args.seed)
    report = run_search(data_args.hyperparameter_search, {}, train.PARSER_CLASSES, model_args, data_args,
                        training_args, specs, splits, PerFold({}), config, {})
    trials = {t["params"]["learning_rate"]: t for t in report["trials"]}
    assert trials[0.0]["fold_values"] == pytest.approx([0.1, 0.2, 0.3])
    assert trials[0.0]["values"][0] == pytest.approx(0.2) and trials[0.0]["fold_std"] == pytest.approx(0.1)
    assert report["best"]["params"] == {"learning_rate": 0.5}


def test_another_search_in_the_same_folder_is_refused(tmp_path, search_data):
    table = {1e-4: metrics(0.3, 0.9, 0)}
    search_with(tmp_path, search_data, {}, table)
    with pytest.raises(DataError, match="holds another search .* hyperparameter_search"):
        search_with(tmp_path, search_data, {"objective": "eval_sentiment_accuracy"}, table)


def test_pruning_callback_reports_and_stops_a_bad_trial():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    from mtl_st.search.objectives import Objectives

    callback = PruningCallback(trial, Objectives(({"eval_ner_f1": 1.0},), ("maximize",), ()))
    state = SimpleNamespace(global_step=4)
    callback.on_evaluate(None, state, None, metrics={"eval_ner_f1": 0.7})
    assert trial.study.get_trials()[0].intermediate_values == {4: 0.7}
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(None, SimpleNamespace(global_step=8), None, metrics={"eval_ner_f1": 0.2})


def test_pruning_sees_an_objective_whose_terms_come_from_separate_task_evaluations():
    # MultiTaskTrainer.evaluate runs one task at a time, so on_evaluate fires once per task: before this was
    # handled, a two-task objective was never reported and the median pruner of the search benchmark pruned nothing.
    from mtl_st.search.objectives import Objectives

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    trial = study.ask()
    callback = PruningCallback(trial, Objectives(({"eval_ner_f1": 1.0, "eval_sentiment_accuracy": 1.0},),
                                                 ("maximize",), ()))
    callback.on_evaluate(None, SimpleNamespace(global_step=5), None, metrics={"eval_ner_f1": 0.4, "eval_ner_loss": 1})
    assert study.get_trials()[0].intermediate_values == {}
    callback.on_evaluate(None, SimpleNamespace(global_step=5), None, metrics={"eval_sentiment_accuracy": 0.7})
    assert study.get_trials()[0].intermediate_values == {5: pytest.approx(1.1)}
    callback.on_evaluate(None, SimpleNamespace(global_step=5), None, metrics={"eval_loss": 0.3})  # the merged call
    with pytest.raises(optuna.TrialPruned):  # the next evaluation: 0.2 + 0.5 < 1.0
        callback.on_evaluate(None, SimpleNamespace(global_step=10), None, metrics={"eval_ner_f1": 0.2})
        callback.on_evaluate(None, SimpleNamespace(global_step=10), None, metrics={"eval_sentiment_accuracy": 0.5})
    assert study.get_trials()[0].intermediate_values == {5: pytest.approx(1.1), 10: pytest.approx(0.7)}
