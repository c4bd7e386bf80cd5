"""serving.commands.demo's model configurations (no training, no Ray)."""

from serving.commands.demo import DemoConfig, _models


def test_smoke_models_use_the_tiny_presets_epochs():
    retriever, ranker = _models(DemoConfig.tiny("unused"))
    assert (retriever.epochs, ranker.epochs, ranker.eval_candidates) == (3, 2, 50)


def test_smoke_models_without_epochs_fall_back_to_the_configs_own():
    # epochs None used to reach the training loop as range(0, None)
    from training.models.ranker_config import RankerConfig
    from training.models.retriever_config import RetrieverConfig

    retriever, ranker = _models(DemoConfig(smoke=True, retriever_epochs=None, ranker_epochs=None))
    assert retriever.epochs == RetrieverConfig.epochs and isinstance(retriever.epochs, int)
    assert ranker.epochs == RankerConfig.tiny().epochs and isinstance(ranker.epochs, int)
