"""What every front shares: settings, the registry, who may do what (the keys), the
limits and the data plane."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.lifecycle import Lifecycle
from mlapi.registry import ModelRegistry
from mlapi.serving.access import Access
from mlapi.serving.limits import Limits
from mlapi.serving.plane import Plane
from mlapi.serving.tracking import Tracking
from mlapi.settings import Settings


@dataclass(frozen=True)
class ServingContext:
    settings: Settings
    registry: ModelRegistry
    access: Access
    tracking: Tracking
    lifecycle: Lifecycle
    limits: Limits
    plane: Plane
