"""``raycart serve --config app.yaml``: every AppArgs field settable from a file, the flags on top,
and a clear error naming a bad field (no Ray: the arguments are built before Ray starts)."""

import argparse

import pytest

from serving.commands.serve import app_args_of, register
from training.common.errors import DataError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_the_config_sets_any_field_and_flags_override_it(tmp_path):
    cfg = tmp_path / "app.yaml"
    cfg.write_text("model_dir: models/ranker\ndata_dir: data/shop\npolicy_epsilon: 0.2\n"
                   "rate_limit_user_per_s: 3.5\nrate_limit_user_burst: 5\nfeedback_root: s3://bucket/feedback\nstate_dir: from-config\n")
    args = app_args_of(_parse("--config", str(cfg), "--state-dir", "from-flag", "--trust-loopback"))
    assert args.policy_epsilon == 0.2 and args.rate_limit_user_per_s == 3.5  # fields without a flag
    assert args.feedback_root == "s3://bucket/feedback"  # s3:// kept as is
    assert args.state_dir.endswith("/from-flag")  # the flag wins over the file
    assert args.model_dir.endswith("/models/ranker") and args.trust_loopback is True
    assert args.wal_dir.endswith("raycart-work/serve-wal")  # the command's own default where neither says


def test_flags_alone_still_serve_and_models_are_required(tmp_path):
    args = app_args_of(_parse("--models", "m", "--data", "d"))
    assert args.model_dir.endswith("/m") and args.trust_loopback is False and args.user_state == "embedded"
    with pytest.raises(DataError, match=r"--models \(or model_dir in --config\) is required"):
        app_args_of(_parse("--data", "d"))


@pytest.mark.parametrize("body, message", [
    ("model_dir: m\ndata_dir: d\npolicy_epsilonn: 0.1\n", r"unknown field\(s\) \['policy_epsilonn'\]"),
    ("model_dir: m\ndata_dir: d\npolicy_epsilon: lots\n", r"policy_epsilon: "),
    ("- just\n- a list\n", "expected a mapping of AppArgs fields"),
    ("model_dir: m\ndata_dir: d\nrate_limit_user_per_s: 2\n", r"app.yaml: Value error, rate_limit_user_per_s and"),
    ("model_dir: [unclosed\n", "app.yaml: "),
])
def test_a_bad_config_names_the_file_and_the_field(tmp_path, body, message):
    cfg = tmp_path / "app.yaml"
    cfg.write_text(body)
    with pytest.raises(DataError, match=message):
        app_args_of(_parse("--config", str(cfg)))


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="--config .*nope.yaml"):
        app_args_of(_parse("--config", str(tmp_path / "nope.yaml")))
