"""Named, independent random streams derived from one seed."""

from __future__ import annotations

import zlib

import numpy as np


def rng(seed: int, stream: str) -> np.random.Generator:
    """A generator for the stream ``stream`` of ``seed``.

    Seeded with the entropy (seed, crc32(stream)), so each stream is
    independent and adding a stream never shifts the numbers of another.
    """
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])
