"""Numerics: cells, losses, optimizers and models in numpy with hand-written BPTT."""
