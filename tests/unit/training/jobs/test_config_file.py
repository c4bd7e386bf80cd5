"""Training configuration files (training.jobs.config_file) and how `raycart train` layers them:
library defaults < the file < flags. No Ray: the CLI's parsing only."""

from __future__ import annotations

import pytest

from training.cli import build_parser
from training.commands import train as train_cli
from training.common.errors import DataError
from training.jobs.config_file import REPO_CONFIGS, KindConfig, read_config, write_config
from training.models.ranker_config import RankerConfig
from training.models.retriever_config import RetrieverConfig


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_every_shipped_config_loads_and_builds_valid_model_configs():
    files = sorted(REPO_CONFIGS.glob("*.yaml"))
    assert {p.stem for p in files} >= {"beauty", "sports", "online-retail", "shop"}
    for path in files:
        r = read_config(path, "retriever", set(train_cli.RETRIEVER_RUN))
        k = read_config(path, "ranker", set(train_cli.RANKER_RUN))
        RetrieverConfig(**{**RetrieverConfig().to_dict(), **r.model})
        RankerConfig(**{**RankerConfig().to_dict(), **k.model})
        assert r.model and k.model, path


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    write_config(path, {"retriever": KindConfig(model={"dim": 32, "heads": 2, "lr": 0.01},
                                                run={"workers": 3, "valid_users": 500, "no": ["image"]})})
    args = _args("retriever", "--config", str(path), "--data", "d", "--out", "o", "--dim", "48", "--workers", "1")
    file = train_cli._read_file(args, "retriever")
    run = train_cli._run_settings(args, file, train_cli.RETRIEVER_RUN)
    model = train_cli._config_from_args(args, RetrieverConfig, file, run["no"])
    assert model.dim == 48 and model.lr == 0.01 and model.heads == 2  # flag, file, file
    assert model.layers == RetrieverConfig().layers and not model.use_image  # default; the file's --no
    assert run["workers"] == 1 and run["valid_users"] == 500 and run["scheme"] == "loo"
    # no file: the library defaults
    args = _args("retriever", "--data", "d", "--out", "o")
    run = train_cli._run_settings(args, train_cli._read_file(args, "retriever"), train_cli.RETRIEVER_RUN)
    assert run == train_cli.RETRIEVER_RUN


def test_bad_files_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    with pytest.raises(DataError, match="no such file"):
        read_config(path, "retriever")
    path.write_text("retriever:\n  model: {dimm: 3}\n")
    with pytest.raises(DataError, match=r"c.yaml: unknown field\(s\) retriever.model.dimm"):
        read_config(path, "retriever")
    path.write_text("retriever:\n  run: {wrkers: 3}\n")
    with pytest.raises(DataError, match=r"retriever.run.wrkers"):
        read_config(path, "retriever", set(train_cli.RETRIEVER_RUN))
    path.write_text("retreiver: {}\n")
    with pytest.raises(DataError, match="unknown section.*retreiver"):
        read_config(path, "retriever")
    path.write_text("retriever: [1\n")
    with pytest.raises(DataError, match="not valid YAML"):
        read_config(path, "retriever")
    path.write_text("retriever:\n  model: {heads: 3}\n")  # dim 64 is not divisible by 3
    args = _args("retriever", "--config", str(path), "--data", "d", "--out", "o")
    with pytest.raises(Exception, match=r"RetrieverConfig \(--config .*c.yaml\).*divisible"):
        train_cli._config_from_args(args, RetrieverConfig, train_cli._read_file(args, "retriever"))


def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "best.yaml"
    write_config(path, {"ranker": KindConfig(model={"lr": 0.002, "epochs": 8}, run={"scheme": "basket"})},
                 notes="from a sweep")
    section = read_config(path, "ranker", set(train_cli.RANKER_RUN))
    assert section == KindConfig(model={"lr": 0.002, "epochs": 8}, run={"scheme": "basket"})
    assert read_config(path, "retriever") == KindConfig()  # an absent section: nothing to layer
