"""``ignite-mlp sweep``: choose hyperparameters on the validation split with Optuna, from one
machine to many; the test split is seen once, for the best trial.

* :mod:`~ignite_mlp.sweep.space`: the search-space TOML file, parsed and checked whole;
* :mod:`~ignite_mlp.sweep.objective`: one trial = one ordinary run, pruned through Ignite;
* :mod:`~ignite_mlp.sweep.study`: the storage (journal file or database), the workers, the count;
* :mod:`~ignite_mlp.sweep.report`: the table, best.json, best.toml and the pictures.

Needs the ``sweep`` extra: ``pip install 'ignite_mlp[sweep]'``.
"""
