"""Per-task training curves from a run's `trainer_state.json`.

    python -m mtl_st.evaluation.plot RUN_DIR [--out curves.png]

Left: each task's training loss (`loss_<task>`, logged by MultiTaskTrainer) and the blended `loss` against the
step. Right: each task's main evaluation metrics (`eval_<task>_f1`, `_accuracy`, `_macro_f1`, `_micro_f1`, and a
similarity task's `_spearman`) against the step. Needs matplotlib (`pip install ".[plot]"`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TASK_LOSS = re.compile(r"^loss_(.+)$")
EVAL_METRIC = re.compile(r"^eval_(.+?)_(macro_f1|micro_f1|f1|accuracy|spearman)$")


def read_curves(state_path: Path) -> tuple[dict[str, list], dict[str, list]]:
    """`({series: [(step, value)]} for losses, {series: [(step, value)]} for eval metrics)` from trainer_state.json."""
    if not state_path.exists():
        raise FileNotFoundError(f"No trainer_state.json at {state_path}: pass a run's output_dir or a checkpoint.")
    history = json.loads(state_path.read_text(encoding="utf-8")).get("log_history", [])
    losses: dict[str, list] = {}
    metrics: dict[str, list] = {}
    for entry in history:
        step = entry.get("step")
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or step is None:
                continue
            if key == "loss" or TASK_LOSS.match(key):
                name = "all tasks" if key == "loss" else TASK_LOSS.match(key).group(1)
                losses.setdefault(name, []).append((step, value))
            elif match := EVAL_METRIC.match(key):
                metrics.setdefault(f"{match.group(1)} {match.group(2)}", []).append((step, value))
    return losses, metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Draw the curves of one run into a PNG; returns its path (default RUN_DIR/training_curves.png)."""
    run_dir = Path(run_dir)
    losses, metrics = read_curves(run_dir / "trainer_state.json")
    if not losses and not metrics:
        raise ValueError(f"{run_dir / 'trainer_state.json'} has no logged losses or eval metrics (set logging_steps).")
    out = Path(out) if out is not None else run_dir / "training_curves.png"
    fig = _figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for name, points in sorted(losses.items(), key=lambda item: item[0] == "all tasks"):
        steps, values = zip(*points)
        left.plot(steps, values, label=name, linestyle="--" if name == "all tasks" else "-",
                  color="grey" if name == "all tasks" else None)
    left.set(title="training loss per task", xlabel="step", ylabel="cross-entropy")
    left.legend()
    for name, points in sorted(metrics.items()):
        steps, values = zip(*points)
        right.plot(steps, values, marker="o", label=name)
    right.set(title="evaluation metric per task", xlabel="step", ylabel="score", ylim=(0, 1))
    if metrics:
        right.legend()
    fig.suptitle(title or run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def plot_compare(curves: dict[str, list[dict]], keys: list[str], out: str | Path, title: str = "") -> Path:
    """One panel per metric key, one line per run: `curves` maps a run's label to its eval log entries."""
    fig = _figure(figsize=(5.5 * len(keys), 4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for label, entries in curves.items():
            points = [(entry["step"], entry[key]) for entry in entries if key in entry]
            if points:
                axis.plot(*zip(*points), marker=".", label=label)
        axis.set(title=key, xlabel="step", ylabel="score")
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    return out


def _figure(figsize: tuple[float, float]):
    """A figure drawn off-screen without pyplot, so plotting never changes a notebook's or script's backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's output_dir (or checkpoint) holding trainer_state.json")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/training_curves.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out, args.title))


if __name__ == "__main__":
    main()
