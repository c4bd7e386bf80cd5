"""How a sweep picks its trials (``raycart tune --search``): random sampling of the space, or
Optuna's TPE (Ray Tune's ``OptunaSearch``), which proposes each new trial from the results so far.

Both read the same YAML spaces (:mod:`tuning.space`) and run the space's hand-set ``defaults`` as
the first trial; ASHA (or FIFO) stops trials either way. Optuna is an optional dependency
(``pip install 'raycart[tune-optuna]'``); asking for it without it installed is an error before
Ray starts. TPE samples at random for its first ``n_startup_trials`` (10, Optuna's default) and
models the results after that, so a sweep of a few trials gains little from it over ``random``.
"""

from __future__ import annotations

from training.common.errors import DataError

SEARCHES = ("random", "optuna")


def check_search(name: str) -> None:
    """A clear error for an unknown search or a missing optional package."""
    if name not in SEARCHES:
        raise DataError(f"--search: {name!r} (choose {' or '.join(SEARCHES)})")
    if name == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError as exc:
            raise DataError("--search optuna: optuna is not installed (pip install 'raycart[tune-optuna]')") from exc


def first_points(name: str, spec: dict, defaults: dict) -> list[dict] | None:
    """The hand-set configuration to evaluate first, in the form the search takes: the random
    generator takes it as is; Optuna takes exactly the sampled keys of the space (fixed values
    are not parameters of its study) and needs a value for each."""
    if not defaults:
        return None
    if name != "optuna":
        return [defaults]
    sampled = [k for k, v in spec.items() if isinstance(v, dict)]
    missing = [k for k in sampled if k not in defaults]
    if missing:
        raise DataError(f"--search optuna: the space's defaults give no value for {missing}: Optuna's first "
                        "trial (the hand-set one) needs every sampled field")
    return [{k: defaults[k] for k in sampled}]


def make_search(name: str, spec: dict, defaults: dict, seed: int, max_concurrent: int):
    """The Ray Tune search algorithm of a sweep, limited to ``max_concurrent`` trials at a time."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    check_search(name)
    points = first_points(name, spec, defaults)
    if name == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=seed)
        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, sampler=sampler),
                                  max_concurrent=max_concurrent)
    # (the generator limits concurrency itself: Tune ignores max_concurrent_trials with it)
    return BasicVariantGenerator(points_to_evaluate=points, random_state=seed, max_concurrent=max_concurrent)
