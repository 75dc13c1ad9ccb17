"""The family registry: model name -> Recipe, from the family modules images, text and speech.

Each family module exports `RECIPES`, a sequence of Recipe instances (images.py: cnn and mlp). Modules
are imported on first use, not at package import, and one that fails to import (a missing optional
dependency, a bug) leaves the others usable: its error is kept in `import_errors()` and shown by
`deepserve-train list` and by `build` when one of its families is asked for.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Iterable
from typing import Any

from models.recipes.base import BuildOptions, FamilyResult, Recipe

__all__ = [
    "FAMILY_MODULES", "RECIPES", "BuildOptions", "FamilyResult", "Recipe", "import_errors", "load_recipes",
]

logger = logging.getLogger(__name__)

FAMILY_MODULES = ("images", "text", "speech", "minilm", "autoencoder", "gan")
"""Modules under models.recipes, in the order their families are built."""

_recipes: dict[str, Recipe] = {}
_errors: dict[str, str] = {}
_loaded = False


def _is_recipe(obj: Any) -> bool:
    return (
        not isinstance(obj, type)
        and isinstance(getattr(obj, "name", None), str)
        and isinstance(getattr(obj, "description", None), str)
        and callable(getattr(obj, "build", None))
    )


def _recipes_of(module: Any) -> Iterable[Recipe]:
    found = getattr(module, "RECIPES", None)
    if isinstance(found, dict):
        found = list(found.values())
    if found is None:  # tolerate a module exporting a single RECIPE or plain instances
        single = getattr(module, "RECIPE", None)
        found = [single] if single is not None else [v for v in vars(module).values() if _is_recipe(v)]
    bad = [r for r in found if not _is_recipe(r)]
    if bad:
        raise TypeError(f"{module.__name__}.RECIPES holds non-recipes: {bad!r}")
    return found


def load_recipes() -> dict[str, Recipe]:
    """Import every family module once; returns name -> Recipe of those that imported."""
    global _loaded
    if _loaded:
        return _recipes
    for module_name in FAMILY_MODULES:
        qualified = f"{__name__}.{module_name}"
        try:
            module = importlib.import_module(qualified)
            for recipe in _recipes_of(module):
                if recipe.name in _recipes:
                    raise ValueError(f"family '{recipe.name}' is defined twice")
                _recipes[recipe.name] = recipe
        except Exception as exc:  # one broken family must not take the others down
            last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" ({last.filename}:{last.lineno})" if last else ""
            _errors[qualified] = f"{type(exc).__name__}: {exc}{where}"
            logger.warning("family module %s failed to import: %s", qualified, _errors[qualified])
    _loaded = True
    return _recipes


def import_errors() -> dict[str, str]:
    """Family modules that failed to import -> one-line reason (after `load_recipes`)."""
    load_recipes()
    return dict(_errors)


def __getattr__(name: str) -> Any:
    # PEP 562: `from models.recipes import RECIPES` imports the family modules only then.
    if name == "RECIPES":
        return load_recipes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
