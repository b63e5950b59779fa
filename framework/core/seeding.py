"""Named, independent random streams derived from one seed; and the tutorials' own stream."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def rng(seed: int, stream: str) -> np.random.Generator:
    """A generator for the stream ``stream`` of ``seed``.

    Seeded with the entropy (seed, crc32(stream)), so each stream is
    independent and adding a stream never shifts the numbers of another.
    """
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def tutorial(seed: int) -> np.random.RandomState:
    """numpy's legacy generator as ``np.random.seed(seed)`` leaves it: the one stream of the tutorials' published code
    (``np.random.rand``, ``np.random.randint``, ... draw from it, in the order the code calls them)."""
    return np.random.RandomState(seed)


@contextmanager
def unchanged(stream: np.random.RandomState | None) -> Iterator[None]:
    """Run the block, then put ``stream`` back where it was (None: nothing to put back), so that what the block
    drew is drawn again after it."""
    state = None if stream is None else stream.get_state()
    try:
        yield
    finally:
        if stream is not None:
            stream.set_state(state)


class RandomStreams:
    """The named streams of one run's seed, remembered in the order they were made.

    A checkpoint saves the state of every stream a run made and restores them
    in the same order, so a resumed run draws the numbers the original would have.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.made: list[tuple[str, np.random.Generator]] = []

    def __call__(self, stream: str) -> np.random.Generator:
        """A new generator for ``stream`` (see :func:`rng`), remembered."""
        generator = rng(self.seed, stream)
        self.made.append((stream, generator))
        return generator

    def states(self) -> list[tuple[str, dict]]:
        """(stream name, bit-generator state) of every stream made, in order."""
        return [(name, generator.bit_generator.state) for name, generator in self.made]

    def restore(self, states: list[tuple[str, dict]]) -> None:
        """Put every stream back into a saved state; the run must have made the same streams."""
        names = [name for name, _ in self.made]
        saved = [name for name, _ in states]
        if names != saved:
            raise ValueError(
                f"the run's random streams ({', '.join(names)}) differ from the saved ones ({', '.join(saved)})"
            )
        for (_, generator), (_, state) in zip(self.made, states, strict=True):
            generator.bit_generator.state = state
