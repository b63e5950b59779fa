"""The seq2seq tutorial (TASKS.md): being written."""
