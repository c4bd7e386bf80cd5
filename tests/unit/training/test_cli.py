"""The real ``raycart`` command on good and bad input: one clear error line, exit code 2,
and no half-written output left behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RAYCART = [str(Path(sys.executable).with_name("raycart"))]


def run(*args, cwd=None):
    return subprocess.run(RAYCART + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_clean_error(proc, fragment, out_dir=None):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raycart: error:"), proc.stderr
    assert fragment in lines[0]
    if out_dir is not None:
        assert not Path(out_dir).exists()
        assert not [p for p in Path(out_dir).parent.iterdir() if p.name.startswith(f".{Path(out_dir).name}")]


def test_prepare_synthetic_then_baseline_then_evaluate(tmp_path):
    data = tmp_path / "shop"
    proc = run("data", "prepare", "--source", "synthetic", "--output", data, "--num-users", 60,
               "--num-items", 120, "--num-events", 3000, "--no-images")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (data / "dataset.json").exists()
    proc = run("baseline", "--data", data, "--model", "itemknn", "--split", "test",
               "--out", tmp_path / "m.json", "--save", tmp_path / "knn")
    assert proc.returncode == 0, proc.stderr
    fitted = json.loads((tmp_path / "m.json").read_text())
    assert {"HR@10", "NDCG@10", "Recall@10", "MRR", "Coverage@10"} <= set(fitted)
    proc = run("evaluate", "--data", data, "--model", tmp_path / "knn", "--split", "test",
               "--out", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["NDCG@10"] == pytest.approx(fitted["NDCG@10"])


def test_missing_input_file(tmp_path):
    out = tmp_path / "out"
    assert_clean_error(run("data", "prepare", "--source", "online-retail", "--input", tmp_path / "nope.csv",
                           "--output", out), "nope.csv", out)


def test_wrong_columns(tmp_path):
    (tmp_path / "e.csv").write_text("who,what,when\n1,2,2024-01-01\n")
    out = tmp_path / "out"
    assert_clean_error(run("data", "prepare", "--source", "generic", "--input", tmp_path / "e.csv",
                           "--output", out), "missing column(s) 'user_id', 'item_id', 'timestamp'", out)


def test_empty_dataset(tmp_path):
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n")
    out = tmp_path / "out"
    assert_clean_error(run("data", "prepare", "--source", "generic", "--input", tmp_path / "e.csv",
                           "--output", out), "no rows", out)


def test_unknown_source(tmp_path):
    out = tmp_path / "out"
    assert_clean_error(run("data", "prepare", "--source", "myshop", "--input", "x", "--output", out),
                       "unknown source 'myshop'", out)


def test_non_numeric_ids(tmp_path):
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n1,2,2024-01-01\n1,abc,2024-01-02\n")
    out = tmp_path / "out"
    assert_clean_error(run("data", "prepare", "--source", "generic", "--input", tmp_path / "e.csv",
                           "--output", out), "non-numeric id 'abc' in row 3", out)


def test_baseline_on_missing_dataset_and_unknown_model(tmp_path, tiny_dataset_dir):
    assert_clean_error(run("baseline", "--data", tmp_path / "none", "--model", "pop"), "no such dataset")
    assert_clean_error(run("baseline", "--data", tiny_dataset_dir, "--model", "bpr"), "unknown baseline 'bpr'")
    assert_clean_error(run("evaluate", "--data", tiny_dataset_dir, "--model", tmp_path), "not a Raycart model")
    assert_clean_error(run("baseline", "--data", tiny_dataset_dir, "--model", "pop", "--scheme", "weekly"),
                       "unknown split 'weekly'")


def test_ranker_refuses_bad_inputs_before_starting_ray(tmp_path, tiny_dataset_dir):
    proc = run("baseline", "--data", tiny_dataset_dir, "--model", "pop", "--save", tmp_path / "pop")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ranker"
    assert_clean_error(run("train", "ranker", "--data", tiny_dataset_dir, "--retriever", tmp_path / "pop",
                           "--out", out), "a ranker reranks a retriever", out)
    assert_clean_error(run("train", "ranker", "--data", tiny_dataset_dir, "--retriever", tmp_path / "nothing",
                           "--out", out), "not a Raycart model", out)
    assert_clean_error(run("train", "ranker", "--data", tmp_path / "none", "--retriever", tmp_path / "pop",
                           "--out", out), "no such dataset", out)
    assert_clean_error(run("train", "ranker", "--data", tiny_dataset_dir, "--retriever", tmp_path / "pop",
                           "--out", out, "--train-candidates", 1), "train_candidates must be >= 2", out)


def test_serve_beyond_loopback_needs_api_keys(tmp_path):
    assert_clean_error(run("serve", "--models", tmp_path / "m", "--data", tmp_path / "d", "--host", "0.0.0.0"),
                       "--host 0.0.0.0: listening beyond loopback needs API keys")
    keys = tmp_path / "keys"
    keys.write_text("owner 0123456789abcdef0123\n")
    assert_clean_error(run("serve", "--models", tmp_path / "m", "--data", tmp_path / "d", "--api-keys-file", keys),
                       "line 1: expected '<shopper|admin> <key>'")
    keys.write_text("# the Secret came out empty\n")
    assert_clean_error(run("serve", "--models", tmp_path / "m", "--data", tmp_path / "d", "--api-keys-file", keys),
                       f"{keys} holds no keys")
    assert_clean_error(run("serve", "--models", tmp_path / "m", "--data", tmp_path / "d"),
                       "no API keys: pass --api-keys-file FILE")
    assert_clean_error(run("serve", "--models", tmp_path / "m", "--data", tmp_path / "d", "--trust-loopback"),
                       "not a Raycart model directory")  # past the key check: the model is looked at next
