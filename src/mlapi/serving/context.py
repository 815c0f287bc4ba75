"""What the routes share: settings, the registry, the authenticators and the limits."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.lifecycle import Lifecycle
from mlapi.registry import ModelRegistry
from mlapi.serving.auth import Authenticator
from mlapi.serving.limits import Limits
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
    admin_auth: Authenticator | None = None  # the repository routes' key, when one is set
