"""The search space of a sweep: a TOML file of fixed train options and searched ones, checked whole.

    [fixed]                      # train options for every trial: the keys of run.toml
    recipe = "tutorial"
    epochs = 20

    [search.lr]                  # a float range (a bound is a float), sampled on a log scale
    low = 1e-4
    high = 1e-1
    log = true

    [search.batch-size]          # an int range (both bounds ints), in steps of 64
    low = 64
    high = 512
    step = 64

    [search.hidden-sizes]        # one of these values (lists allowed)
    choices = [[128], [512, 256]]

    [[enqueue]]                  # a trial to run before the sampler proposes any (repeatable):
    lr = 0.01                    # searched options only; the ones left out are sampled
    hidden-sizes = [512, 256]

Every value a trial can get is checked with :class:`TrainConfig` before anything runs, so a
wrong type or an impossible value is one line at the start, not a failed trial an hour in.
Importable without Ignite or Optuna (Optuna only types :func:`suggest`'s trial).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite_mlp.config.train_config import TrainConfig, read_toml
from ignite_mlp.errors import UserError

if TYPE_CHECKING:
    import optuna

# Set by the sweep itself for every trial: a search space may not set them.
SWEEP_OWNED = (
    *("data", "run_dir", "resume", "overwrite", "val_split", "progress", "nproc_per_node", "handlers"),
    *("device", "cache_dir", "backend"),
)
# The validation split is drawn with the seed: searching it would score trials on different images.
NOT_SEARCHABLE = ("seed",)
RANGE_KEYS = {"low", "high", "log", "step"}
# Beyond this many combinations of the options' extremes, each pair of options is checked instead.
MAX_COMBINATIONS = 4096
# The spaces the project ships (``--space tutorial``): see the files' own comments.
SHIPPED = Path(__file__).resolve().parent / "spaces"


@dataclass(frozen=True)
class Param:
    """One searched option: an int or float range, or a list of choices."""

    name: str  # TrainConfig's field name
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def kind(self) -> str:
        if self.choices:
            return "choices"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"


@dataclass
class SearchSpace:
    """``fixed`` train options (field names) and the searched ``params``, in file order."""

    fixed: dict[str, Any] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list)
    # [[enqueue]] points (field names -> values), run first, in file order, once in a study's life.
    enqueued: list[dict[str, Any]] = field(default_factory=list)


def shipped_spaces() -> list[Path]:
    return sorted(SHIPPED.glob("*.toml"))


def space_path(path: str | Path) -> Path:
    """``path``, or the shipped space of that name (``tutorial``, ``strong``) when no such file exists."""
    p = Path(path)
    if not p.exists() and (SHIPPED / f"{p.name}.toml").is_file() and p.name == str(path):
        return SHIPPED / f"{p.name}.toml"
    return p


def read_space(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a search-space file; a missing one names the spaces the project ships."""
    p = space_path(path)
    if not p.is_file():
        names = ", ".join(s.stem for s in shipped_spaces())
        raise UserError(
            f"--space {path}: no such file; give a search-space TOML file, or one the project ships: {names} "
            f"(in {SHIPPED})"
        )
    return read_toml(p, "--space", "a search-space TOML file")


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space file; every problem is a :class:`UserError` naming it."""
    return parse_space(read_space(path), str(path))


def parse_space(raw: dict[str, Any], source: str = "space") -> SearchSpace:
    """The checked :class:`SearchSpace` of a parsed TOML document.

    >>> parse_space({"search": {"lr": {"low": 1e-3, "high": 0.1, "log": True}}}).params[0].kind
    'float'
    >>> parse_space({"search": {"epochs": {"low": 5, "high": 2}}})
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --space space: [search.epochs] is an empty range (low 5 >= high 2); make low < high
    """
    unknown = set(raw) - {"fixed", "search", "enqueue"}
    if unknown:
        raise UserError(
            f"--space {source}: unknown section {sorted(unknown)[0]!r}; use [fixed], [search.OPTION] and [[enqueue]]"
        )
    fixed: dict[str, Any] = {}
    for key, value in _table(raw, "fixed", source).items():
        name = _field_name(key, source, "[fixed]")
        if name in fixed:
            raise UserError(f"--space {source}: [fixed] sets {_key(name)} twice (two spellings); keep one")
        fixed[name] = value
    params = [_param(key, spec, source) for key, spec in _table(raw, "search", source).items()]
    for first, second in itertools.combinations(params, 2):
        if first.name == second.name:
            raise UserError(f"--space {source}: {_key(first.name)} is searched twice (two spellings); keep one")
    for param in params:
        if param.name in fixed:
            raise UserError(f"--space {source}: {_key(param.name)} is both fixed and searched; keep one")
    enqueued = [_point(i + 1, point, params, source) for i, point in enumerate(_points(raw, source))]
    space = SearchSpace(fixed, params, enqueued)
    _check_values(space, source)
    return space


def enqueue(study: optuna.Study, space: SearchSpace) -> None:
    """Queue the space's ``[[enqueue]]`` points in ``study``, each once in the study's life: a
    continued sweep finds them there, queued or run, and queues none again."""
    for point in space.enqueued:
        study.enqueue_trial({k: _label(v) for k, v in point.items()}, skip_if_exists=True)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's train options (field names): the space's fixed ones and a value for each searched one."""
    values = dict(space.fixed)
    for p in space.params:
        if p.kind == "choices":
            # Optuna's choices are plain values: lists (hidden sizes) travel as their JSON text.
            labels = [_label(c) for c in p.choices]
            picked = trial.suggest_categorical(p.name, labels)
            values[p.name] = json.loads(picked) if isinstance(picked, str) and picked in _list_labels(p) else picked
        elif p.kind == "int":
            step = int(p.step) if p.step is not None else 1
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)  # type: ignore[arg-type]
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)  # type: ignore[arg-type]
    return values


def decode_params(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A finished trial's Optuna parameters as train options (list choices back from their JSON text)."""
    lists = {p.name: _list_labels(p) for p in space.params}
    return {k: json.loads(v) if isinstance(v, str) and v in lists.get(k, ()) else v for k, v in params.items()}


def _label(value: Any) -> Any:
    """A choice as Optuna holds it: a plain value, a list as its JSON text."""
    return json.dumps(value) if isinstance(value, list) else value


def _list_labels(p: Param) -> set[str]:
    return {_label(c) for c in p.choices if isinstance(c, list)}


def _table(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise UserError(f"--space {source}: {name} must be a table [{name}]; see ignite-mlp sweep --help")
    return table


def _key(name: str) -> str:
    return name.replace("_", "-")


def _field_name(key: str, source: str, where: str) -> str:
    name = key.replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    aliases = {f.metadata["flag"].replace("-", "_"): f.name for f in fields.values() if "flag" in f.metadata}
    name = aliases.get(name, name)
    if name not in fields:
        known = sorted({_key(n) for n in fields} | {_key(n) for n in aliases})
        close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use the train flags' names, e.g. lr"
        raise UserError(f"--space {source}: {where} unknown option {key!r}; {hint}")
    if name in SWEEP_OWNED:
        raise UserError(f"--space {source}: {where} {key!r} is set by the sweep for every trial; remove it")
    return name


def _param(key: str, spec: Any, source: str) -> Param:
    where = f"[search.{key}]"
    name = _field_name(key, source, "[search]")
    if name in NOT_SEARCHABLE:
        raise UserError(f"--space {source}: {where} cannot be searched (it draws the validation split); fix it")
    if not isinstance(spec, dict):
        raise UserError(f"--space {source}: {where} must be a table with low/high or choices")
    if "choices" in spec:
        choices = spec["choices"]
        extra = set(spec) - {"choices"}
        if extra:
            raise UserError(f"--space {source}: {where} takes choices or low/high, not both ({sorted(extra)[0]})")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"--space {source}: {where} choices must be a non-empty list")
        return Param(name, choices=tuple(choices))
    extra = set(spec) - RANGE_KEYS
    if extra:
        bad = sorted(extra)[0]
        raise UserError(f"--space {source}: {where} unknown key {bad!r}; use low, high, log, step or choices")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"--space {source}: {where} needs low and high (or choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"--space {source}: {where} {label} must be a number (got {value!r})")
    if not isinstance(log, bool):
        raise UserError(f"--space {source}: {where} log must be true or false (got {log!r})")
    if low >= high:
        raise UserError(f"--space {source}: {where} is an empty range (low {low} >= high {high}); make low < high")
    if log and low <= 0:
        raise UserError(f"--space {source}: {where} a log range needs low > 0 (got {low})")
    if step is not None and (step <= 0 or log):
        raise UserError(f"--space {source}: {where} step must be > 0 and without log (got {step})")
    is_int = typing.get_type_hints(TrainConfig)[name] is int
    if is_int and not (isinstance(low, int) and isinstance(high, int)):
        raise UserError(f"--space {source}: {where} {_key(name)} takes whole numbers: write low and high as ints")
    if step is not None:
        _check_step(low, high, step, isinstance(low, int) and isinstance(high, int), f"--space {source}: {where}")
    return Param(name, low, high, log, step)


def _points(raw: dict[str, Any], source: str) -> list[Any]:
    points = raw.get("enqueue", [])
    if not isinstance(points, list):
        raise UserError(f"--space {source}: enqueue must be an array of tables, each written [[enqueue]]")
    return points


def _point(number: int, point: Any, params: list[Param], source: str) -> dict[str, Any]:
    """One ``[[enqueue]]`` table as field names -> values, each a value its searched option can take."""
    where = f"--space {source}: [[enqueue]] {number}"
    if not isinstance(point, dict) or not point:
        raise UserError(f"{where} must be a table of searched options, e.g. lr = 0.01")
    searched = {p.name: p for p in params}
    values: dict[str, Any] = {}
    for key, value in point.items():
        name = _field_name(key, source, f"[[enqueue]] {number}")
        if name not in searched:
            raise UserError(f"{where}: {key!r} is not searched; an enqueued trial sets searched options only")
        if name in values:
            raise UserError(f"{where} sets {_key(name)} twice (two spellings); keep one")
        taken = _taken(searched[name], value)
        if taken is None:
            raise UserError(f"{where}: {key} = {value!r} is not a value [search.{_key(name)}] can give")
        values[name] = taken
    return values


def _taken(p: Param, value: Any) -> Any:
    """``value`` as a trial of ``p`` gets it (the choice itself: 0 for 0.0), or None where none
    can: neither one of its choices nor a number in its range (on its grid, whole for ints)."""
    if p.choices:
        same = [c for c in p.choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
        return same[0] if same else None
    return value if _in_range(p, value) else None


def _in_range(p: Param, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:  # type: ignore[operator]
        return False
    if p.kind == "int" and not isinstance(value, int):
        return False
    steps = (value - p.low) / p.step if p.step is not None else 0.0  # type: ignore[operator]
    return math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9)


def _check_step(low: float, high: float, step: float, ints: bool, where: str) -> None:
    """A grid Optuna takes as written: a whole step for an int range, no longer than the range,
    and ``high`` on the grid (Optuna would move it with a warning)."""
    if ints and not isinstance(step, int):
        raise UserError(
            f"{where} step {step} on a range of whole numbers: give a whole step, e.g. {max(1, round(step))}"
        )
    if step > high - low:
        raise UserError(f"{where} step {step} is longer than the range {low}..{high}: a grid of one value; shorten it")
    steps = (high - low) / step
    if not math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9):
        on_grid = low + math.floor(steps) * step
        raise UserError(f"{where} high {high} is not low + a whole number of steps of {step}; make high {on_grid:g}")


def extremes(p: Param) -> list[Any]:
    """The values of ``p`` that bound what a trial can get: every choice, or low and the highest
    grid point."""
    if p.choices:
        return list(p.choices)
    if p.step is None:
        return [p.low, p.high]
    top = p.low + math.floor((p.high - p.low) / p.step + 1e-9) * p.step  # type: ignore[operator]
    return [p.low, int(top) if isinstance(p.low, int) and isinstance(p.step, int) else top]


def combinations(space: SearchSpace) -> typing.Iterator[dict[str, Any]]:
    """The trial settings at the space's corners: every combination of the options' extremes, or,
    past :data:`MAX_COMBINATIONS`, every pair of options at their extremes (the rest at their first)."""
    values = [extremes(p) for p in space.params]
    if math.prod(len(v) for v in values) <= MAX_COMBINATIONS:
        for combo in itertools.product(*values):
            yield {p.name: v for p, v in zip(space.params, combo, strict=True)}
        return
    first = {p.name: v[0] for p, v in zip(space.params, values, strict=True)}
    for (i, a), (j, b) in itertools.combinations(enumerate(values), 2):
        for x, y in itertools.product(a, b):
            yield {**first, space.params[i].name: x, space.params[j].name: y}


def trial_options(space: SearchSpace, values: dict[str, Any]) -> TrainConfig:
    settings = {**space.fixed, **values}
    return TrainConfig.from_recipe(settings.pop("recipe", "tutorial"), **settings)


def _where(space: SearchSpace, values: dict[str, Any]) -> str:
    """The searched values of one corner, as the space writes them."""
    return ", ".join(f"{_key(k)} = {v!r}" for k, v in values.items() if k in {p.name for p in space.params})


def _check_values(space: SearchSpace, source: str) -> None:
    """Build the config of each value alone, then of each corner of the space: a wrong type, an
    impossible value or an impossible combination fails now, named."""
    if not space.params:
        raise UserError(f"--space {source}: nothing to search; add a [search.OPTION] table, e.g. [search.lr]")
    for p in space.params:
        for value in extremes(p):
            try:
                trial_options(space, {p.name: value})
            except UserError as e:
                raise UserError(f"--space {source}: [search.{_key(p.name)}] value {value!r}: {e}") from None
    try:
        trial_options(space, {})
    except UserError as e:
        raise UserError(f"--space {source}: [fixed]: {e}") from None
    for values in combinations(space):
        try:
            trial_options(space, values)
        except UserError as e:
            raise UserError(f"--space {source}: the trial with {_where(space, values)}: {e}") from None
    for number, point in enumerate(space.enqueued, 1):
        try:
            trial_options(space, point)
        except UserError as e:
            raise UserError(f"--space {source}: [[enqueue]] {number}: {e}") from None


def check_against_data(space: SearchSpace, image_shape: tuple[int, int, int], classes: int, source: str) -> None:
    """Every corner of the space against the data: the crop against the image size, the model's
    size against the images and classes."""
    from ignite_mlp.config.validation import check_model_size

    c, h, w = image_shape
    for values in combinations(space):
        config = trial_options(space, values)
        try:
            config.check_data(image_shape)
            check_model_size(c * h * w, list(config.hidden_sizes), classes, config.blocks, config.expansion)
        except UserError as e:
            raise UserError(
                f"--space {source}: on this data ({c}x{h}x{w} images), the trial with "
                f"{_where(space, values) or 'the fixed options'}: {e}"
            ) from None
