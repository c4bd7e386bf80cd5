"""``raycart retrain``'s flags: the fine-tuning levers parse, and a bad value is an error naming the
flag before anything runs (no Ray)."""

import argparse
import re

import pytest

from serving.commands.retrain import register

BASE = ["retrain", "--feedback", "f", "--data", "d", "--model", "m"]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args([*BASE, *argv])


def test_the_levers_default_to_changing_nothing_and_parse():
    a = _parse()
    assert (a.recent_weight, a.replay, a.warmup_steps, a.lr_scale, a.exposure) == (1.0, 1.0, 0, 1.0, True)
    a = _parse("--recent-weight", "5", "--replay", "0.3", "--warmup-steps", "20", "--lr-scale", "0.3", "--no-exposure")
    assert (a.recent_weight, a.replay, a.warmup_steps, a.lr_scale, a.exposure) == (5.0, 0.3, 20, 0.3, False)


@pytest.mark.parametrize("flag,value,message", [
    ("--recent-weight", "0", "must be > 0"), ("--recent-weight", "lots", "expected a number"),
    ("--replay", "0", r"must be in \(0, 1\]"), ("--replay", "1.2", r"must be in \(0, 1\]"),
    ("--warmup-steps", "-3", "must be >= 0"), ("--lr-scale", "0", "must be > 0"), ("--warmup-steps", "2.5", "expected a whole number"),
    ("--ndcg-tolerance", "-0.1", r"must be in \[0, 1\)")])
def test_a_bad_value_names_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        _parse(flag, value)
    err = capsys.readouterr().err
    assert flag in err and re.search(message, err), err
