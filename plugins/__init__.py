"""The tutorial tasks, each a plugin registered through the ``framework`` entry points."""
