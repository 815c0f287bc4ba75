"""The Open Inference Protocol over gRPC: a second front over the models, batcher,
auth, limits and metrics that HTTP uses (server.py starts it, service.py answers)."""
