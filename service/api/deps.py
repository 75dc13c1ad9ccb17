"""Annotated dependencies: the settings and the model registry live on `app.state`.

Both are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.repository.registry import ModelRegistry
from service.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
