"""The core: configuration, registry, hook specs, plugins and the engine.

It imports nothing from tracking or the command line.
"""
