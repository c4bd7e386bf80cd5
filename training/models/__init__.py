"""Model code: plain PyTorch, no Ray. Encoders, the two-tower retriever and their losses."""
