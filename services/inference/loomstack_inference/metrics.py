"""Prometheus metrics of the inference service, as one object the entry point builds and hands to
the parts that count (the runner, the chat servicer, the maintenance loop), as the gateway's
`GatewayMetrics` is: no module-level collectors, so a second set (a test's) has its own registry."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class InferenceMetrics:
    """The service's collectors, on `registry` (the process's default one: what
    `prometheus_client.start_http_server` serves, with the process collectors beside them)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "loomstack_batch_requests_total",
            "Batch lines processed by this engine.",
            ["model", "outcome"],
            registry=registry,
        )
        self.output_tokens = Counter(
            "loomstack_batch_output_tokens_total",
            "Output tokens generated for batch lines.",
            ["model"],
            registry=registry,
        )
        self.input_tokens = Counter(
            "loomstack_batch_input_tokens_total",
            "Prompt tokens of batch lines.",
            ["model"],
            registry=registry,
        )
        self.inflight = Gauge(
            "loomstack_engine_inflight_requests",
            "Requests in flight in this engine.",
            registry=registry,
        )
        self.throughput = Gauge(
            "loomstack_engine_output_tokens_per_second",
            "Batch output tokens/s this engine sustains: finished in the last minute, per second "
            "of work.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "loomstack_batch_queue_depth_lines",
            "Lines waiting or running in unfinished shards.",
            ["model"],
            registry=registry,
        )
        self.batches_finalized = Counter(
            "loomstack_batches_finalized_total",
            "Batches that reached a final status.",
            ["status"],
            registry=registry,
        )
        self.online_inflight = Gauge(
            "loomstack_engine_online_requests",
            "Online chat requests this engine is answering now.",
            registry=registry,
        )
        self.online_refused = Counter(
            "loomstack_engine_online_refused_total",
            "Online chat requests refused because the engine's online queue was full.",
            registry=registry,
        )
