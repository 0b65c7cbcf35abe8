"""``ignite-mlp sweep``: choose hyperparameters on the validation split with Optuna, from one
machine to many; the test split is seen once for each best trial, and every look is recorded.

* :mod:`~ignite_mlp.sweep.settings`: what the command asks for, its defaults, the checks of the settings;
* :mod:`~ignite_mlp.sweep.space`: the search-space TOML file, checked whole, at every corner and against the data;
* :mod:`~ignite_mlp.sweep.storage`, :mod:`~ignite_mlp.sweep.journal`: the storage; a journal that survives a crash;
* :mod:`~ignite_mlp.sweep.study`: what a sweep decides once and keeps in its study; the sweep run to its count;
* :mod:`~ignite_mlp.sweep.workers`, :mod:`~ignite_mlp.sweep.locks`: the workers, dead ones, Ctrl-C;
* :mod:`~ignite_mlp.sweep.objective`: one trial = one ordinary run, pruned through Ignite;
* :mod:`~ignite_mlp.sweep.progress`: what a running sweep shows;
* :mod:`~ignite_mlp.sweep.report`: the table, best.json, best.toml and the pictures.

Needs the ``sweep`` extra: ``pip install 'ignite_mlp[sweep]'``.
"""
