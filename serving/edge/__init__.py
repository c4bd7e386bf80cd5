"""The HTTP edge (FastAPI, no Ray): routes, security, shopper identity, the shop page and its pictures."""
