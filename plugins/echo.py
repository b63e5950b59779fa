"""The echo tutorial (TASKS.md): being written."""
