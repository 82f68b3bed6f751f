"""Bundled demo models: ``<name>.safetensors`` + ``<name>.card.yaml``; see ``terraseg.recipes``."""
