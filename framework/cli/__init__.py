"""The command line and the Python API: the top layer."""
