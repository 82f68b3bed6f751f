"""Bundled demo models: ``<name>.safetensors`` + ``<name>.card.yaml``; see ``make_demo_models``."""
