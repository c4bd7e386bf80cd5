"""``RunSettings``: one home for where and how a job runs -- the CLI's flags, a config file's
``run:`` keys and the job classes' defaults all come from it."""

import argparse
import dataclasses

from training.commands.train import COMMON_RUN, register
from training.jobs.ranker_data import RankerJob
from training.jobs.run_settings import RUN, RunSettings, run_defaults
from training.jobs.train_retriever import RetrieverJob


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_every_setting_is_a_flag_of_every_kind_and_a_config_key():
    names = {f.name for f in dataclasses.fields(RunSettings)}
    assert set(COMMON_RUN) == names == set(run_defaults())
    for kind, extra in (("retriever", []), ("ranker", ["--retriever", "r"])):
        given = _parse(kind, "--data", "d", "--out", "o", *extra, "--workers", "3", "--placement", "SPREAD",
                       "--no", "text", "image", "--gpu")
        assert (given.workers, given.placement, given.no, given.gpu) == (3, "SPREAD", ["text", "image"], True)
        unset = _parse(kind, "--data", "d", "--out", "o", *extra)
        assert all(getattr(unset, n) is None for n in names)  # falls back to the file, then RUN


def test_the_jobs_take_their_run_defaults_from_run_settings():
    for job in (RetrieverJob(data="d", out="o"), RankerJob(data="d", retriever="r", out="o")):
        assert (job.scheme, job.workers, job.use_gpu, job.storage, job.max_failures, job.placement) == \
            (RUN.scheme, RUN.workers, RUN.gpu, RUN.storage, RUN.max_failures, RUN.placement)
