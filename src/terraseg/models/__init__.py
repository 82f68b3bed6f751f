"""Model specifications, safe loading and built-in models."""

from terraseg.models.builtin import BUILTIN_MODELS, build_builtin
from terraseg.models.spec import ClassInfo, InputSpec, ModelSpec

__all__ = ["BUILTIN_MODELS", "ClassInfo", "InputSpec", "ModelSpec", "build_builtin"]
