"""Retraining from the feedback log (``raycart retrain``), and the detached actor that runs it for the
app's schedule (the schedule itself is a Serve deployment: :mod:`serving.deploy.retrain_trigger`)."""
