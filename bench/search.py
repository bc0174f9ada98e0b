"""The search itself, measured: TPE against random and grid search at the same budget, and pruning on against off.

    python bench/search.py --seeds 0 1 2 --trials 8 --rows 100   # every search (resumable), the table
    python bench/search.py --summarize                                 # the table from the finished searches

Every search is `python train.py configs/quickstart_search.yaml` (the quickstart data, its objective and constraint,
its search space) with a smaller budget: `--trials` trials of `--rows` training rows per task and one epoch each,
scored on the whole validation split of each task (300 + 300 rows, the 60 similarity pairs), no best/ retrain.
Variants: `tpe` (no pruning), `tpe+median` (median pruner on evaluations every `--median-eval-steps` steps, 5,
where the others evaluate every 13: a 100-row trial is 14 steps), `random`, and `grid` (a fixed grid of 8 points
over learning rate, head rate and task sampling; one run: it does not depend on the seed). Each search's
`hp_search.json` gives the best objective reached (validation: NER F1 + sentiment accuracy, among trials that keep
the similarity Spearman >= 0.83), the trials' summed wall time, how many were pruned and the time pruning saved.
One search per process, run one after another, seed by seed (so a sweep cut short still has every variant).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import common
import yaml

CONFIG = common.REPO / "configs" / "quickstart_search.yaml"
# 2 x 2 x 2 = 8 points: the same budget as `--trials 8` (a larger --trials runs the grid once, no more).
GRID = {"learning_rate": [3.0e-5, 1.0e-4], "head_learning_rate": [3.0e-3, 3.0e-2],
        "task_sampling": ["proportional", "round_robin"]}


def block(variant: str, seed: int, trials: int) -> dict:
    base = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["hyperparameter_search"]
    base.update(n_trials=trials, seed=seed, include_current=False, train_best=False, pruner="none")
    if variant == "tpe+median":
        base["pruner"] = "median"
    elif variant == "random":
        base["sampler"] = "random"
    elif variant == "grid":
        base.pop("space")
        base.update(sampler="grid", grid=GRID)
    return base


def run(variant: str, seed: int, args) -> Path:
    folder = Path(args.workdir) / f"{variant}-seed{seed}"
    if (folder / "hp_search.json").exists() and json.loads((folder / "hp_search.json").read_text()).get("plots"):
        print(f"skip {folder.name} (done)", flush=True)
        return folder
    command = [sys.executable, str(common.REPO / "train.py"), str(CONFIG), "--output_dir", str(folder),
               "--max_train_samples", str(args.rows),
               *(["--max_eval_samples", str(args.eval_rows)] if args.eval_rows else []),
               "--do_predict", "false",
               *(["--eval_steps", str(args.median_eval_steps)] if variant == "tpe+median" else []),
               "--hyperparameter_search", json.dumps(block(variant, seed, args.trials))]
    print(" ".join(command[:6]) + f" ... ({variant}, seed {seed})", flush=True)
    with open(folder.with_suffix(".log"), "w", encoding="utf-8") as log:
        subprocess.run(command, check=True, cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return folder


def summary(folder: Path) -> dict:
    report = json.loads((folder / "hp_search.json").read_text(encoding="utf-8"))
    best = report["best"]["values"][0] if report["best"] else None
    return {"best": best, "wall_s": report["wall_time_trials_s"], "pruned": report["pruned"],
            "saved_s": report["wall_time_saved_s"], "counted": report["counted"]}


def summarize(args) -> dict:
    rows: dict[str, list[dict]] = {}
    for folder in sorted(Path(args.workdir).glob("*-seed*")):
        if folder.is_dir() and (folder / "hp_search.json").exists():
            rows.setdefault(folder.name.rsplit("-seed", 1)[0], []).append({"seed": folder.name.rsplit("seed", 1)[1],
                                                                          **summary(folder)})
    print(f"Machine: {common.machine_line()}")
    print("| search | seeds | best objective (mean ± std) | per seed | trials' wall time, s (mean) | pruned | "
          "time saved by pruning, s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        best = [r["best"] for r in runs if r["best"] is not None]
        spread = statistics.stdev(best) if len(best) > 1 else 0.0
        print(f"| {name} | {len(runs)} | {statistics.mean(best):.4f} ± {spread:.4f} | "
              f"{', '.join(f'{b:.4f}' for b in best)} | {statistics.mean(r['wall_s'] for r in runs):.0f} | "
              f"{sum(r['pruned'] for r in runs)} | {sum(r['saved_s'] for r in runs):.0f} |")
    result = {"machine": common.machine_line(), "trials": args.trials, "rows": args.rows, "eval_rows": args.eval_rows,
              "searches": rows}
    common.write_json(args.out, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tpe", "tpe+median", "random", "grid"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--eval-rows", type=int, default=0,
                        help="first N validation rows per task (0 = all; the files are ordered: SST's first 100 "
                             "rows are 85%% positive)")
    parser.add_argument("--workdir", default="/tmp/mtl-search-bench")
    parser.add_argument("--out", type=Path, default=common.REPO / "bench" / "results" / "search.json")
    parser.add_argument("--median-eval-steps", type=int, default=5,
                        help="tpe+median evaluates this often, so the pruner has points to stop at (the config: 13)")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if not args.summarize:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for variant in args.variants:
                if variant != "grid" or seed == args.seeds[0]:
                    run(variant, seed, args)
    summarize(args)


if __name__ == "__main__":
    main()
