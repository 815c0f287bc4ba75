"""What every front shares: settings, the registry, the authenticators, the limits
and the data plane."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.lifecycle import Lifecycle
from mlapi.registry import ModelRegistry
from mlapi.serving.auth import Authenticator
from mlapi.serving.limits import Limits
from mlapi.serving.plane import Plane
from mlapi.serving.tracking import Tracking
from mlapi.settings import Settings


@dataclass(frozen=True)
class ServingContext:
    settings: Settings
    registry: ModelRegistry
    auth: Authenticator | None
    tracking: Tracking
    lifecycle: Lifecycle
    limits: Limits
    plane: Plane
    admin_auth: Authenticator | None = None  # the repository routes' key, when one is set
