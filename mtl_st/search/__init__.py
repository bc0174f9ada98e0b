"""Hyperparameter and grid search over a run's settings (the `hyperparameter_search:` block of the training YAML).

- `config`: the block itself, checked before any training (every refusal is one line naming the field);
- `space`: the search space and how a trial's parameters become a run's arguments;
- `objectives`: metric(s) to optimise, their directions, and constraints a trial must meet to count;
- `study`: the Optuna study (a SQLite file in `output_dir` by default, or any storage URL such as PostgreSQL for
  several workers), its budget and the recovery of trials whose process died;
- `runner`: one trial = one normal run in `output_dir/trial-<n>/`; then the best settings trained into `best/`;
- `report`: `hp_search.json`, `trials.csv`, `best_config.yaml` and the plots.
"""
