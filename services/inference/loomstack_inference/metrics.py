"""Prometheus metrics of the inference service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter(
    "loomstack_batch_requests_total", "Batch lines processed by this engine.", ["model", "outcome"]
)
OUTPUT_TOKENS = Counter(
    "loomstack_batch_output_tokens_total", "Output tokens generated for batch lines.", ["model"]
)
INPUT_TOKENS = Counter(
    "loomstack_batch_input_tokens_total", "Prompt tokens of batch lines.", ["model"]
)
INFLIGHT = Gauge("loomstack_engine_inflight_requests", "Requests in flight in this engine.")
THROUGHPUT = Gauge(
    "loomstack_engine_output_tokens_per_second",
    "Batch output tokens/s this engine sustains: finished in the last minute, per second of work.",
)
QUEUE_DEPTH = Gauge(
    "loomstack_batch_queue_depth_lines", "Lines waiting or running in unfinished shards.", ["model"]
)
BATCHES_FINALIZED = Counter(
    "loomstack_batches_finalized_total", "Batches that reached a final status.", ["status"]
)
ONLINE_INFLIGHT = Gauge(
    "loomstack_engine_online_requests", "Online chat requests this engine is answering now."
)
ONLINE_REFUSED = Counter(
    "loomstack_engine_online_refused_total",
    "Online chat requests refused because the engine's online queue was full.",
)
