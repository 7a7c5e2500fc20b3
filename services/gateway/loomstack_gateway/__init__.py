"""Loomstack's HTTP gateway: the OpenAI REST API, served over the inference service's gRPC API."""
