"""Import paths the app is deployed and retrained by (training.common.importpath.resolve; no Ray cluster)."""

import pytest
from pydantic import ValidationError

from serving.core.schemas import AppArgs
from serving.deploy.run import APP_BUILDER
from training.common.importpath import resolve


def test_the_default_hooks_name_the_app_builder_and_the_retrainer():
    from serving.deploy.app import build_app
    from serving.jobs.retrainer import retrainer

    assert resolve(APP_BUILDER) is build_app
    assert resolve(AppArgs(model_dir="m", data_dir="d").retrainer) is retrainer


def test_resolve_follows_dotted_attributes_and_refuses_malformed_paths():
    assert resolve("serving.core.schemas:AppArgs.model_fields")["retrainer"].default == "serving.jobs.retrainer:retrainer"
    for bad in ("serving.jobs.retrainer", ":retrainer", "serving.jobs.retrainer:"):
        with pytest.raises(ValueError, match="package.module:attribute"):
            resolve(bad)
    with pytest.raises(AttributeError):
        resolve("serving.jobs.retrainer:no_such_function")
    with pytest.raises(ValidationError):
        AppArgs(model_dir="m", data_dir="d", retrainer="serving.jobs.retrainer.retrainer")  # no ':'
