"""The durable feedback log: the write-ahead log and the shared log of several replicas; no Ray."""
