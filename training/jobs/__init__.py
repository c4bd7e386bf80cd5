"""Ray Train jobs: the shared training loop and its distributed plumbing, the retriever and ranker jobs, the registry of trainer kinds, progress lines, configuration files."""
