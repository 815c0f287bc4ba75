"""What the server and its models say about themselves, on every front: the
protocol extensions served and a model's metadata (its versions, platform,
inputs, outputs and labels)."""

from __future__ import annotations

from mlapi.registry import ModelRegistry

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def metadata_of(registry: ModelRegistry, name: str, version: str | None) -> dict[str, object]:
    """A model's metadata (of one version when ``version`` is given)."""
    record = registry.record(name)
    served = registry.get(name, version)
    runtime = served.loaded_runtime()
    signature = runtime.signature
    versions = [str(served.version)] if version else [str(v) for v in sorted(record.versions)]
    body: dict[str, object] = {
        "name": served.name,
        "versions": versions,
        "platform": (served.config and served.config.platform) or runtime.platform,
        "inputs": [spec.as_metadata() for spec in signature.inputs],
        "outputs": [spec.as_metadata() for spec in signature.outputs],
    }
    if served.config is not None and served.config.labels:
        body["parameters"] = {"labels": list(served.config.labels)}
    return body
