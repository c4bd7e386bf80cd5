"""The raycart sub-commands of training: data, baseline, evaluate, train, ope (registered in pyproject.toml's raycart.commands)."""
