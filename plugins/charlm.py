"""The charlm tutorial (TASKS.md): being written."""
