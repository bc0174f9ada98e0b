"""Training curves (`mtl_st.evaluation.plot`, `python -m mtl_st.evaluation.plot`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mtl_st.evaluation.plot import read_curves
from tests.utils import REPO


def test_plot_command_draws_per_task_curves(pushed_run, tmp_path):
    run, _ = pushed_run
    losses, _ = read_curves(run / "trainer_state.json")
    assert {"ner", "sentiment", "all tasks"} <= set(losses)
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "mtl_st.evaluation.plot", str(run), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    state = {"log_history": [{"step": 1, "loss": 1.0, "loss_a": 1.0}, {"step": 2, "eval_a_accuracy": 0.5}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    code = ("import matplotlib; matplotlib.use('svg'); import mtl_st.evaluation.plot as plot; "
            f"plot.plot_run({str(tmp_path)!r}); assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "training_curves.png").stat().st_size > 0
