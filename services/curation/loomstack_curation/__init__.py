"""Loomstack curation: task schemas, Label Studio tasks with predictions, training examples."""
