"""The best trials of a short study, again at full length: a search space whose ``[search]`` is the
study's own, whose ``[fixed]`` is the study's with more epochs, and whose ``[[enqueue]]`` tables are
the best trials' values (and, with ``--recipe``, a preset's), best first. A sweep of that space
trains them on the same validation split, as one study, and its report evaluates the test split
for the best of them only:

    python scripts/full_length_space.py runs/sweep --top 2 --epochs 90 --out full.toml
    ignite-mlp sweep --space full.toml --trials 2 --sweep-dir runs/full --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ignite_mlp.errors import UserError


def full_length_space(
    sweep_dir: str, top: int, epochs: int, recipe: str | None = None, study: str | None = None
) -> str:
    """The space file's text (see the module's docstring)."""
    from optuna.trial import TrialState

    from ignite_mlp.config.train_config import TrainConfig
    from ignite_mlp.sweep.report import toml_value
    from ignite_mlp.sweep.settings import SweepSettings
    from ignite_mlp.sweep.space import decode_params
    from ignite_mlp.sweep.study import report_study

    if top < 1 or epochs < 1:
        raise UserError(f"--top and --epochs must be >= 1 (got {top} and {epochs})")
    found, saved, space = report_study(SweepSettings(data="", space="", sweep_dir=sweep_dir, study=study))
    complete = sorted(found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -(t.value or 0))
    if not complete:
        raise UserError(f"{sweep_dir}: no complete trial yet; run the study first")
    chosen = complete[:top]
    lines = [
        f"# The best {len(chosen)} trials of study {found.study_name!r} ({sweep_dir}) at {epochs} epochs, best first:",
        *(
            f"#   trial {t.number}: validation accuracy {t.value:.2f}% at {len(t.intermediate_values)} epochs"
            for t in chosen
        ),
        "",
        "[fixed]",
    ]
    lines += [f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in {**space.fixed, "epochs": epochs}.items()]
    for raw_name, spec in saved["space"].get("search", {}).items():
        lines += ["", f"[search.{raw_name}]", *(f"{k} = {toml_value(v)}" for k, v in spec.items())]
    points = [(f"trial {t.number}", decode_params(t.params, space)) for t in chosen]
    if recipe is not None:
        preset = TrainConfig.from_recipe(recipe)
        points.append((f"--recipe {recipe} as it is", {p.name: getattr(preset, p.name) for p in space.params}))
    for label, values in points:
        lines += [
            "",
            f"[[enqueue]]  # {label}",
            *(f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in values.items()),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the short study's sweep folder")
    parser.add_argument("--top", type=int, default=2, help="how many of its best trials (default: 2)")
    parser.add_argument("--epochs", type=int, required=True, help="the full length")
    parser.add_argument("--recipe", help="also enqueue this preset's values of the searched options")
    parser.add_argument("--study", help="study name (default: the sweep folder's name)")
    parser.add_argument("--out", help="write the space here (default: print it)")
    ns = parser.parse_args(argv)
    try:
        text = full_length_space(ns.sweep_dir, ns.top, ns.epochs, ns.recipe, ns.study)
        if ns.out is not None:
            if Path(ns.out).exists():
                raise UserError(f"--out {ns.out}: already there; give a new file name")
            Path(ns.out).write_text(text)
        else:
            sys.stdout.write(text)
    except UserError as e:
        print(f"full_length_space: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
