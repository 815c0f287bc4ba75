"""The model repository extension's operations, on every front: whether they are
on, the index of every version and its state, and a load that says why it failed."""

from __future__ import annotations

from mlapi.errors import Forbidden, InsufficientMemory, ModelLoadError
from mlapi.registry import ModelRegistry, State
from mlapi.settings import Settings


def check_enabled(settings: Settings) -> None:
    if not settings.repository_api:
        raise Forbidden("the repository API is turned off (MLAPI_REPOSITORY_API=false)")


def index_items(registry: ModelRegistry, ready_only: bool) -> list[dict[str, object]]:
    """Every version of every model, with its state (and reason, when it has one)."""
    items = [
        item for record in registry.records() for item in record.describe(with_candidates=True)
    ]
    if ready_only:
        items = [item for item in items if item["state"] == State.READY.value]
    return items


async def load_model(registry: ModelRegistry, name: str) -> None:
    """Load (or roll out) a model; an error that says why when any version failed."""
    record = await registry.load(name)
    failed = [c for c in record.candidates.values() if c.state is State.FAILED]
    if record.rollout_error:
        raise ModelLoadError(
            f"failed to load '{record.name}': {record.rollout_error}; "
            f"the versions that served keep serving"
        )
    if record.is_ready and not failed:
        return
    if failed:  # what served before keeps serving
        reasons = "; ".join(f"version {c.version}: {c.reason}" for c in failed)
        kept = "; the versions that served keep serving" if record.serves() else ""
        error = InsufficientMemory if all(c.refused for c in failed) else ModelLoadError
        raise error(f"failed to load '{record.name}': {reasons}{kept}")
    reasons = "; ".join(str(item.get("reason", item["state"])) for item in record.describe())
    refused = any(v.refused for v in record.versions.values())
    raise (InsufficientMemory if refused else ModelLoadError)(
        f"failed to load '{record.name}': {reasons}"
    )
