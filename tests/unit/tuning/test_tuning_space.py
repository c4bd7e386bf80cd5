"""Sweep search spaces and sweep jobs are checked before Ray starts (no Ray here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from training.common.errors import DataError
from training.models.ranker_config import RankerConfig
from training.models.retriever_config import RetrieverConfig
from tuning.space import grid_size, read_space, to_tune

SPACES = Path(__file__).resolve().parents[3] / "tuning" / "spaces"
RAYCART = str(Path(sys.executable).with_name("raycart"))


@pytest.mark.parametrize("name,cls", [("retriever.yaml", RetrieverConfig), ("ranker.yaml", RankerConfig),
                                      ("smoke.yaml", RetrieverConfig)])
def test_shipped_spaces_are_valid_and_their_defaults_build_a_config(name, cls):
    spec, defaults = read_space(str(SPACES / name), cls)
    assert spec and defaults
    cls(**{**{k: v for k, v in spec.items() if not isinstance(v, dict)}, **defaults})
    space = to_tune(spec)
    assert set(space) == set(spec)


def test_bad_spaces_name_the_field(tmp_path):
    cases = {"nope: {choice: [1, 2]}": "'nope' is not a RetrieverConfig field",
             "lr: {lognormal: [1, 2]}": "'lr' must be a value or one of",
             "lr: {loguniform: [1]}": "loguniform takes [low, high]",
             "dim: {choice: []}": "choice takes a non-empty list",
             "defaults: {colour: red}": "'colour' is not a RetrieverConfig field",
             "- a list": "expected a mapping"}
    for text, message in cases.items():
        path = tmp_path / "space.yaml"
        path.write_text(text)
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read_space(str(path), RetrieverConfig)
    with pytest.raises(DataError, match="no such file"):
        read_space(str(tmp_path / "missing.yaml"), RetrieverConfig)


def test_grid_size_counts_only_discrete_spaces():
    assert grid_size({"dim": {"choice": [1, 2, 3]}, "layers": {"choice": [1, 2]}, "heads": 1}) == 6
    assert grid_size({"lr": {"loguniform": [0.001, 0.1]}}) is None


def test_tune_cli_refuses_bad_input_before_ray_starts(tmp_path):
    from training.data.prepare import prepare

    shop = tmp_path / "shop"
    prepare("synthetic", None, str(shop), num_users=30, num_items=100, num_events=600, images=False)
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("learning_rate: {loguniform: [0.001, 0.1]}\n")
    for args, fragment in [(["--data", tmp_path / "none"], "not a prepared Raycart dataset"),
                           (["--data", shop, "--space", bad_space], "'learning_rate' is not a RetrieverConfig"),
                           (["--data", shop, "--samples", "0"], "must be at least 1")]:
        proc = subprocess.run([RAYCART, "tune", "retriever", "--out", str(tmp_path / "o"), *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("raycart: error:"), proc.stderr
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "o").exists()
