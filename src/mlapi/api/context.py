"""What the routes share: settings, the registry, the authenticators and the limits."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.api.auth import Authenticator
from mlapi.api.limits import Limits
from mlapi.api.tracking import Tracking
from mlapi.lifecycle import Lifecycle
from mlapi.registry import ModelRegistry
from mlapi.settings import Settings


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    registry: ModelRegistry
    auth: Authenticator | None
    tracking: Tracking
    lifecycle: Lifecycle
    limits: Limits
    admin_auth: Authenticator | None = None  # the repository routes' key, when one is set
