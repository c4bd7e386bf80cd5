"""The cluster manifests stay in step with the code: the RayService's Serve config is
cluster/serve.yaml's, and every RayJob entrypoint parses with the real `raycart` parser."""

import shlex
from pathlib import Path

import yaml

from serving.core.schemas import AppArgs
from training.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[3] / "cluster"


def test_rayservice_embeds_the_serve_config():
    service = yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["spec"]["rayClusterConfig"]["rayVersion"].startswith("2.60")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    reference = yaml.safe_load((CLUSTER / "serve.yaml").read_text())["applications"]
    assert embedded == reference
    AppArgs(**embedded[0]["args"])


def test_rayjob_entrypoints_parse_with_the_raycart_cli():
    parser = build_parser()
    for name in ("rayjob-train.yaml", "rayjob-tune.yaml", "rayjob-retrain.yaml"):
        job = yaml.safe_load((CLUSTER / name).read_text())
        assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"].startswith("2.60")
        for command in job["spec"]["entrypoint"].split("&&"):
            argv = shlex.split(command)
            assert argv[0] == "raycart", command
            args = parser.parse_args(argv[1:])  # exits (SystemExit) on an unknown flag
            assert callable(args.func)
