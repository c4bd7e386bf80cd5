"""Ray Train's controller poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, default 2 s) against the
length of a short run: a tiny retriever (3 epochs) and ranker (2 epochs) on a small synthetic shop,
1 worker each, in a fresh local Ray per setting. Reports each ``fit`` (start to the final
checkpoint back on the driver) and each whole job. The tests run with 0.25 s (tests/conftest.py).

``python benchmarks/train_poll.py`` -> a table and ``benchmarks/results/train_poll.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

INTERVALS = ("2.0", "0.25")

CHILD = r"""
import json, shutil, tempfile, time
import ray
import training.jobs.loop as loop, training.jobs.train_ranker as tk, training.jobs.train_retriever as tr
fits = []
def timed(*a, **k):
    t = time.time(); out = loop.fit(*a, **k); fits.append(round(time.time() - t, 1)); return out
tr.fit = tk.fit = timed
from training.data.prepare import prepare
from training.models.ranker_config import RankerConfig
from training.models.retriever_config import RetrieverConfig
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
         log_to_driver=False)
root = tempfile.mkdtemp()
data = root + "/shop"
prepare("synthetic", None, data, num_users=300, num_items=200, num_events=12_000, images=False)
t = time.time()
tr.train_retriever(tr.RetrieverJob(data=data, out=root + "/r", workers=1, storage=root + "/runs",
                   model=RetrieverConfig(dim=16, layers=1, heads=1, max_len=10, epochs=3, patience=3)))
t_r = time.time() - t
t = time.time()
tk.train_ranker(tk.RankerJob(data=data, retriever=root + "/r", out=root + "/k", workers=1, storage=root + "/runs",
                model=RankerConfig(**{**RankerConfig.tiny().to_dict(), "epochs": 2, "eval_candidates": 50})))
t_k = time.time() - t
shutil.rmtree(root)
print("RESULT " + json.dumps({"retriever_fit_s": fits[0], "ranker_fit_s": fits[1],
                              "retriever_job_s": round(t_r, 1), "ranker_job_s": round(t_k, 1)}))
"""


def main() -> None:
    rows = []
    for interval in INTERVALS:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600,
                             check=True).stdout
        row = {"interval_s": float(interval), **json.loads(out.split("RESULT ", 1)[1])}
        rows.append(row)
        print(f"poll {interval:>5} s: retriever fit {row['retriever_fit_s']:5.1f} s (job {row['retriever_job_s']:5.1f} s), "
              f"ranker fit {row['ranker_fit_s']:5.1f} s (job {row['ranker_job_s']:5.1f} s)", flush=True)
    print(f"\n{'poll':>6} {'retriever fit':>14} {'ranker fit':>11} {'retriever job':>14} {'ranker job':>11}")
    for r in rows:
        print(f"{r['interval_s']:>5}s {r['retriever_fit_s']:>13.1f}s {r['ranker_fit_s']:>10.1f}s "
              f"{r['retriever_job_s']:>13.1f}s {r['ranker_job_s']:>10.1f}s")
    out = Path("benchmarks/results/train_poll.json")
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": "2-core x86_64, 24 GiB, no GPU",
                               "command": "python benchmarks/train_poll.py", "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
