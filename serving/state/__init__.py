"""Real-time user state and its backends (memory with a journal, Redis); no Ray."""
