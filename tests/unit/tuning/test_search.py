"""The sweep's search algorithms are built from the YAML spaces without Ray running: Optuna
(TPE) starts from the hand-set defaults and then proposes points inside the space; a missing
optuna or an unknown search is one clear error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.common.errors import DataError
from training.models.retriever_config import RetrieverConfig
from tuning.search import check_search, first_points, make_search
from tuning.space import read_space, to_tune
from tuning.sweep import METRIC

SPACES = Path(__file__).resolve().parents[3] / "tuning" / "spaces"
RAYCART = str(Path(sys.executable).with_name("raycart"))


def _optuna(seed: int = 0, max_concurrent: int = 2):
    spec, defaults = read_space(str(SPACES / "smoke.yaml"), RetrieverConfig)
    search = make_search("optuna", spec, defaults, seed=seed, max_concurrent=max_concurrent)
    assert search.set_search_properties(METRIC, "max", to_tune(spec))
    return search, spec, defaults


def _run(search, n: int) -> list[dict]:
    """Suggest and complete ``n`` trials one at a time (a made-up metric: higher lr is better)."""
    out = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i}", {METRIC: config["lr"], "training_iteration": 1})
        out.append(config)
    return out


def test_optuna_search_starts_from_the_defaults_then_samples_inside_the_space():
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    search, spec, defaults = _optuna()
    assert isinstance(search, ConcurrencyLimiter) and isinstance(search.searcher, OptunaSearch)
    configs = _run(search, 8)
    sampled = {k for k, v in spec.items() if isinstance(v, dict)}
    assert configs[0] == {k: defaults[k] for k in sampled}  # the hand-set trial comes first
    for c in configs[1:]:
        assert set(c) == sampled  # fixed values are not Optuna parameters (Tune adds them)
        assert 0.0003 <= c["lr"] <= 0.03 and c["dim"] in (8, 16) and 0.0 <= c["dropout"] <= 0.3
    assert len({c["lr"] for c in configs}) == len(configs)  # it explores
    # seeded: the same sweep proposes the same trials
    again, _, _ = _optuna()
    assert _run(again, 8) == configs
    other, _, _ = _optuna(seed=1)
    assert _run(other, 8)[1:] != configs[1:]


def test_optuna_search_runs_at_most_max_concurrent_trials():
    search, _, _ = _optuna(max_concurrent=2)
    assert search.suggest("a") is not None and search.suggest("b") is not None
    assert search.suggest("c") is None  # both still running
    search.on_trial_complete("a", {METRIC: 0.1, "training_iteration": 1})
    assert search.suggest("c") is not None


def test_random_search_is_tunes_variant_generator():
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec, defaults = read_space(str(SPACES / "retriever.yaml"), RetrieverConfig)
    assert isinstance(make_search("random", spec, defaults, seed=0, max_concurrent=2), BasicVariantGenerator)
    assert first_points("random", spec, defaults) == [defaults]


def test_optuna_first_point_keeps_only_sampled_fields_and_needs_all_of_them():
    spec, defaults = read_space(str(SPACES / "retriever.yaml"), RetrieverConfig)
    (point,) = first_points("optuna", spec, defaults)
    assert "heads" in defaults and "heads" not in point  # a fixed value in the space
    assert set(point) == {k for k, v in spec.items() if isinstance(v, dict)}
    with pytest.raises(DataError, match=r"defaults give no value for \['dim'\]"):
        first_points("optuna", spec, {k: v for k, v in defaults.items() if k != "dim"})
    assert first_points("optuna", spec, {}) is None


def test_unknown_search_and_missing_optuna_are_clear_errors(monkeypatch):
    with pytest.raises(DataError, match=r"--search: 'bayes' \(choose random or optuna\)"):
        check_search("bayes")
    check_search("optuna")  # installed here (the dev extra)
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not
    with pytest.raises(DataError, match=r"optuna is not installed \(pip install 'raycart\[tune-optuna\]'\)"):
        check_search("optuna")


def test_tune_cli_without_optuna_says_how_to_get_it(tmp_path):
    from training.data.prepare import prepare

    shop = tmp_path / "shop"
    prepare("synthetic", None, str(shop), num_users=30, num_items=100, num_events=600, images=False)
    fake = tmp_path / "site" / "optuna"  # an optuna that cannot be imported, first on the path
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([RAYCART, "tune", "retriever", "--smoke", "--search", "optuna", "--data", str(shop),
                           "--out", str(tmp_path / "o"), "--storage", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("raycart: error:"), proc.stderr
    assert "--search optuna: optuna is not installed (pip install 'raycart[tune-optuna]')" in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()
