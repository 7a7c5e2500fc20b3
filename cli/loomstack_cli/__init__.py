"""The `loomstack` command line: the local stack (up, down, status) and batches."""
