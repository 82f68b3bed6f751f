"""Model specifications and cards, safe loading, built-in and bundled models."""

from terraseg.models.builtin import BUILTIN_MODELS, build_builtin
from terraseg.models.card import (
    Architecture,
    GSDWarning,
    ModelCard,
    TrainingInfo,
    adapt_bands,
    check_gsd,
    load_card,
    save_card,
)
from terraseg.models.loading import (
    ModelInfo,
    build_network,
    bundled_names,
    list_models,
    load_model,
    save_model,
)
from terraseg.models.spec import DEFAULT_CLASSES, ClassInfo, InputSpec, ModelSpec

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_CLASSES",
    "Architecture",
    "ClassInfo",
    "GSDWarning",
    "InputSpec",
    "ModelCard",
    "ModelInfo",
    "ModelSpec",
    "TrainingInfo",
    "adapt_bands",
    "build_builtin",
    "build_network",
    "bundled_names",
    "check_gsd",
    "list_models",
    "load_card",
    "load_model",
    "save_card",
    "save_model",
]
