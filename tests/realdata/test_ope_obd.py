"""`raycart ope` on the real Open Bandit Dataset sample: the command, its result file, and bad
target policies refused with one line naming the problem."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RAYCART = str(Path(sys.executable).with_name("raycart"))


def _run(*args):
    return subprocess.run([RAYCART, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def obd(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("obd") / "random-all"
    proc = _run("data", "prepare", "--source", "obd", "--input", shared / "data/obd/random/all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _table(path, rows):
    path.write_text("item_id,position,probability\n" + "".join(f"{i},{p},{q}\n" for i, p, q in rows))
    return path


def test_ope_on_obd_writes_every_estimator_with_its_interval(obd, tmp_path):
    # the uniform policy over the 80 items at each of the 3 positions: the logger itself (OBD random)
    target = _table(tmp_path / "uniform.csv", [(i, p, 1 / 80) for i in range(80) for p in (1, 2, 3)])
    out = tmp_path / "result.json"
    proc = _run("ope", "--data", obd, "--target-policy", target, "--out", out, "--bootstrap", 200)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"ips", "snips", "dm", "dr", "switch-dr"}
    logged = result["logged"]["value"]
    for name in ("ips", "snips", "dm", "dr", "switch-dr"):
        r = result[name]
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1] and "effective_sample_size" in r and "max_weight" in r
    # evaluating the logging policy on its own logs: IPS weights are all 1, IPS is the logged mean
    assert abs(result["ips"]["value"] - logged) < 1e-12 and abs(result["snips"]["value"] - logged) < 1e-12
    assert result["ips"]["max_weight"] == pytest.approx(1.0)
    assert "ips" in proc.stdout and "snips" in proc.stdout


def test_bad_target_policies_get_one_line_errors(obd, tmp_path):
    cases = [
        (_table(tmp_path / "sum.csv", [(i, p, 1 / 40) for i in range(80) for p in (1, 2, 3)]),
         "position 1 sum to 2, not 1"),
        (_table(tmp_path / "item.csv", [("no-such-item", 1, 1.0), ("1", 2, 1.0), ("1", 3, 1.0)]),
         "unknown item_id(s) ['no-such-item']"),
        (_table(tmp_path / "pos.csv", [(0, 9, 1.0)]), "position 9 was never logged"),
        (_table(tmp_path / "neg.csv", [(0, 1, -1.0)]), "probability must be finite and >= 0"),
    ]
    (tmp_path / "cols.csv").write_text("item,prob\n1,1\n")
    cases.append((tmp_path / "cols.csv", "needs columns item_id, position, probability"))
    for path, fragment in cases:
        proc = _run("ope", "--data", obd, "--target-policy", path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], (path.name, proc.stderr)
    proc = _run("ope", "--data", obd)
    assert proc.returncode == 2 and "--target-policy FILE is required" in proc.stderr
