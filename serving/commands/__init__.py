"""The raycart sub-commands of serving: serve, token, shop, demo, simulate, retrain, republish."""
