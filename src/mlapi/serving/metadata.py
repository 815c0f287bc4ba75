"""What the server and its models say about themselves, on every front: the
protocol extensions served and a model's metadata (its versions, platform,
inputs, outputs and labels)."""

from __future__ import annotations

import time

from mlapi.registry import Cold, ModelRegistry, ModelVersion
from mlapi.tensors import Signature

EXTENSIONS = ["binary_tensor_data", "model_repository"]


async def metadata_of(registry: ModelRegistry, name: str, version: str | None) -> dict[str, object]:
    """A model's metadata (of one version when ``version`` is given). An on-demand
    model that is not loaded here is described without loading it when its
    model.toml declares its inputs and outputs, or from what its last load here
    showed; else this request loads it, as an inference would."""
    record = registry.record(name)
    try:
        served = registry.get(name, version)
    except Cold:
        known = registry.cold_signature(name, version)
        if known is None:
            served = await registry.demand(name, version, time.perf_counter())
        else:
            cold, signature, platform = known
            return _body(cold, version, record.versions, signature, platform)
    runtime = served.loaded_runtime()
    platform = (served.config and served.config.platform) or runtime.platform
    return _body(served, version, record.versions, runtime.signature, platform)


def _body(
    served: ModelVersion,
    version: str | None,
    versions: dict[int, ModelVersion],
    signature: Signature,
    platform: str,
) -> dict[str, object]:
    body: dict[str, object] = {
        "name": served.name,
        "versions": [str(served.version)] if version else [str(v) for v in sorted(versions)],
        "platform": platform,
        "inputs": [spec.as_metadata() for spec in signature.inputs],
        "outputs": [spec.as_metadata() for spec in signature.outputs],
    }
    if served.config is not None and served.config.labels:
        body["parameters"] = {"labels": list(served.config.labels)}
    return body
