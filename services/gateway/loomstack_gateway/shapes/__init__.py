"""Protos → the JSON objects the API answers with, in one place: OpenAI's own objects (files,
batches, models, fine-tuning jobs, their events and checkpoints) and our extensions
(comparisons, curation), built by plain functions from the messages, with the helpers they
share in `common`."""
