"""The adder tutorial (TASKS.md): being written."""
