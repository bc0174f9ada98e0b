"""Searches that really train: a grid, a kill -9 in the middle and a rerun, two workers on one PostgreSQL study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.search.helpers import REPO, search_config, write_yaml

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}


def report(run: Path) -> dict:
    return json.loads((run / "hp_search.json").read_text(encoding="utf-8"))


def counted(entries: list[dict]) -> list[dict]:
    return [t for t in entries if t["state"] in ("COMPLETE", "PRUNED")]


def test_grid_runs_each_combination_once_and_best_loads_everywhere(tmp_path, search_data):
    import train

    grid = {"learning_rate": [1.0e-3, 3.0e-3], "task_sampling": ["proportional", "round_robin"]}
    config = search_config(tmp_path, search_data, {"sampler": "grid", "grid": grid, "n_trials": 4,
                                                         "objective": "eval_ner_f1"})
    assert train.cli([str(write_yaml(tmp_path / "grid.yaml", config))]) == 0
    run = tmp_path / "search"
    result = report(run)
    combos = sorted((t["params"]["learning_rate"], t["params"]["task_sampling"]) for t in result["trials"])
    assert combos == sorted((lr, s) for lr in grid["learning_rate"] for s in grid["task_sampling"])
    assert all(t["state"] == "COMPLETE" for t in result["trials"]) and len(result["trials"]) == 4
    rows = (run / "trials.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 1 + 4
    assert not any((run / f"trial-{n}" / "model.safetensors").exists() for n in range(4))  # weights dropped
    assert (run / "search_history.png").stat().st_size > 0

    best = result["best"]
    chosen = next(t for t in result["trials"] if t["number"] == best["trial"])
    assert best["values"] == [max(t["values"][0] for t in result["trials"])]
    settings = json.loads((run / "best" / "_run_settings.json").read_text())
    assert settings["learning_rate"] == chosen["params"]["learning_rate"]
    assert settings["task_sampling"] == chosen["params"]["task_sampling"]
    results = json.loads((run / "best" / "all_results.json").read_text())
    assert results["eval_ner_f1"] == pytest.approx(chosen["metrics"]["eval_ner_f1"], abs=1e-6)  # the same model
    assert "test_ner_f1" in results and set(result["best_test_metrics"]) <= set(results)
    assert not any(key.startswith("test_") for t in result["trials"] for key in t["metrics"])
    best_config = yaml.safe_load((run / "best_config.yaml").read_text())
    assert "hyperparameter_search" not in best_config
    assert best_config["learning_rate"] == chosen["params"]["learning_rate"]

    from transformers import AutoModel

    import modeling_mtl  # noqa: F401  (registers the model classes)

    model = AutoModel.from_pretrained(run / "best")
    assert type(model).__name__ == "MultiTaskModel" and model.config.task_names == ["sentiment", "ner", "similarity"]
    script = (f"import sys\nfor n in ('configuration_mtl','modeling_mtl','tasks_mtl','losses_mtl','encoding_mtl',"
              f"'postprocess_mtl','pipeline_mtl','mtl_st'):\n    sys.modules[n] = None\n"
              f"from transformers import AutoModel\n"
              f"m = AutoModel.from_pretrained({str(run / 'best')!r}, trust_remote_code=True)\n"
              f"print(type(m).__module__, m.encode(['Emma likes Rome']).shape)")
    remote = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**ENV, "PYTHONPATH": ""})
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout.split()[0].startswith("transformers_modules")
    with torch.no_grad():
        local = model.encode(["Emma likes Rome"])
    assert local.shape == (1, 32)


def start_search(config_path: Path, log: Path, *extra: str) -> subprocess.Popen:
    handle = open(log, "w", encoding="utf-8")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), str(config_path), *extra], stdout=handle,
                            stderr=subprocess.STDOUT, env=ENV, cwd=config_path.parent)


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the search ended (exit {process.returncode}) before the condition held:\n"
                        + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def test_the_median_pruner_sees_a_two_task_objective_during_training(tmp_path, search_data):
    import optuna

    import train

    config = search_config(tmp_path, search_data, {"n_trials": 3, "pruner": "median", "train_best": False,
                                                         "objective": {"eval_ner_f1": 1.0, "eval_sentiment_accuracy": 1.0},
                                                         "space": {"learning_rate": {"type": "float", "low": 1e-4,
                                                                                     "high": 3e-3, "log": True}}},
                           eval_strategy="steps", eval_steps=2, do_predict=False)
    assert train.cli([str(write_yaml(tmp_path / "pruned.yaml", config))]) == 0
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'search' / 'hp_search.db'}")
    steps = [sorted(trial.intermediate_values) for trial in study.trials]
    assert all(steps) and all(s[0] == 2 for s in steps)  # every trial reported its evaluations to the pruner


def test_kill_9_then_rerun_loses_no_trial_and_counts_none_twice(tmp_path, search_data):
    space = {"learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}
    config = search_config(tmp_path, search_data, {"n_trials": 4, "sampler": "random", "space": space},
                           max_steps=16, save_strategy="steps", save_steps=4)
    path = write_yaml(tmp_path / "search.yaml", config)
    run, log = tmp_path / "search", tmp_path / "first.log"
    process = start_search(path, log)
    try:
        # Kill it in the middle of its third trial, once that trial has written a checkpoint.
        wait_for(lambda: (run / "trial-2" / "checkpoint-4" / "trainer_state.json").exists(), 240, process, log)
        before = report(run)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done_before = {t["number"]: t for t in before["trials"] if t["state"] == "COMPLETE"}
    assert set(done_before) == {0, 1}

    second = subprocess.run([sys.executable, str(REPO / "train.py"), str(path)], capture_output=True, text=True,
                            env=ENV, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = report(run)
    trials = {t["number"]: t for t in after["trials"]}
    for number, trial in done_before.items():  # completed trials kept as they were
        assert trials[number]["params"] == trial["params"] and trials[number]["values"] == trial["values"]
    assert trials[2]["state"] == "FAIL" and "interrupted" in trials[2]["note"]
    retry = [t for t in after["trials"] if t.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE" and retry[0]["folder"] == "trial-2"
    assert retry[0]["params"] == trials[2]["params"]
    assert "Resuming from checkpoint-" in second.stderr + second.stdout  # the retry went on from its checkpoint
    assert len(counted(after["trials"])) == 4 == after["counted"]
    params = [json.dumps(t["params"], sort_keys=True) for t in counted(after["trials"])]
    assert len(set(params)) == len(params)  # nothing counted twice


def postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on a free loopback port (as the `postgres` user when the tests run as root)."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="mtl-pg-"))  # in /tmp: pytest's own folders are closed to other users
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        subprocess.run(["chown", "postgres", str(data)], check=True)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        result = subprocess.run([*prefix, *command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command[0]}: {result.stdout[-1000:]}{result.stderr[-1000:]}"

    run(str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    run(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, search_data, postgres):
    space = {"learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
             "task_sampling": {"type": "categorical", "choices": ["proportional", "round_robin"]}}
    config = search_config(tmp_path, search_data, {"n_trials": 6, "sampler": "tpe", "n_startup_trials": 6,
                                                   "space": space, "storage": postgres, "study_name": "shared"})
    path = write_yaml(tmp_path / "search.yaml", config)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_search(path, log) for log in logs]
    for worker in workers:
        worker.wait(timeout=600)
    outputs = [log.read_text(encoding="utf-8") for log in logs]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    result = report(tmp_path / "search")
    ran = counted(result["trials"])
    assert len(ran) == 6 and result["counted"] == 6
    assert len({t["number"] for t in ran}) == 6 and len({t["folder"] for t in ran}) == 6
    progress = [line for output in outputs for line in output.splitlines() if line.startswith("[search] trial ")]
    numbers = [int(line.split()[2]) for line in progress]
    assert sorted(numbers) == sorted(t["number"] for t in ran)  # each trial reported by exactly one worker
    assert all(any(line.startswith("[search] trial ") for line in output.splitlines()) for output in outputs), \
        "both workers ran trials"
    for trial in ran:  # and each trial trained exactly once, in its own folder
        state = json.loads((tmp_path / "search" / trial["folder"] / "trainer_state.json").read_text())
        assert state["global_step"] == config["max_steps"]
    params = [json.dumps(t["params"], sort_keys=True) for t in ran]
    assert len(set(params)) == 6  # the two workers drew different trials
