"""Hydra configs of `python -m framework`, installed as the package ``framework.conf``."""
