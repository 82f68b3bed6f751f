"""Choosing the model(s) of a run: one model, or a semantic and an instance model in one pass.

A run names a ``semantic`` model, an ``instance`` model, or both
(:class:`~terraseg.config.ModelsConfig`). :func:`resolve_models` checks the
pair before any pixel is read and returns ONE network and spec for the engine:

- one model: as it is (a boundary model's card gives buildings as instances and,
  when it has a ``road`` class, roads too);
- both: :class:`PairedNet` runs the two networks on the same batch of tiles and
  returns probabilities in the boundary layout (background, building, road,
  building edge): roads from the semantic model, buildings (interior and edge)
  from the instance model, so every chunk is read and tiled once.
"""

from __future__ import annotations

import torch
from torch import nn

from terraseg.errors import ConfigError
from terraseg.models.card import Architecture, ModelCard
from terraseg.models.loading import load_model
from terraseg.models.spec import BOUNDARY_CLASSES, ModelSpec

__all__ = ["PairedNet", "resolve_models"]

RUNNABLE_TASKS = ("semantic", "boundary", "detection")
"""Tasks the engine runs: class scores (``semantic``), class scores with an edge ring
(``boundary``), per-tile boxes, masks and scores (``detection``, run as boundary-layout
probabilities through :class:`~terraseg.models.detector.DenseDetections`)."""


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits.float(), dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits.float())
    return logits.float()


class PairedNet(nn.Module):
    """A semantic and a boundary network on the same tiles, as boundary-layout probabilities.

    ``road`` is the semantic model's road probability; the instance model's
    building interior and edge are scaled by ``1 - road``; background takes the
    rest, so the four channels sum to 1.
    """

    def __init__(
        self, semantic: nn.Module, instance: nn.Module, semantic_spec: ModelSpec,
        instance_spec: ModelSpec,
    ) -> None:
        super().__init__()
        self.semantic = semantic
        self.instance = instance
        self.sem_activation = semantic_spec.activation
        self.inst_activation = instance_spec.activation
        self.road = _required(semantic_spec, "road")
        self.interior = _required(instance_spec, "building")
        self.edge = _required(instance_spec, "building edge")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_sem = _activate(self.semantic(x), self.sem_activation)
        p_inst = _activate(self.instance(x), self.inst_activation)
        road = p_sem[:, self.road]
        keep = 1.0 - road
        interior = p_inst[:, self.interior] * keep
        edge = p_inst[:, self.edge] * keep
        background = (1.0 - road - interior - edge).clamp_min(0.0)
        return torch.stack([background, interior, road, edge], dim=1)


def _required(spec: ModelSpec, name: str) -> int:
    found = spec.class_id(name)
    if found is None:
        raise ConfigError(
            f"model '{spec.name}' has no class '{name}' (classes "
            f"{[c.name for c in spec.classes]}); pair models whose cards name it"
        )
    return found


def _check_runnable(card: ModelCard, role: str) -> None:
    if card.task not in RUNNABLE_TASKS:
        raise ConfigError(
            f"{role} model '{card.name}' has task '{card.task}', which this engine does not "
            f"run yet (it runs {', '.join(RUNNABLE_TASKS)}); use a boundary model such as "
            "demo-instance"
        )


def _instance_model(name: str) -> tuple[nn.Module, ModelCard]:
    """Load an instance model; a detector comes back as boundary-layout probabilities."""
    net, card = load_model(name)
    _check_runnable(card, "instance")
    if card.task != "detection":
        return net, card
    from terraseg.models.detector import DenseDetections

    label = card.class_id("building")
    assert label is not None  # the card validator requires it
    dense = DenseDetections(net, building_label=label).eval()
    as_boundary = card.model_copy(
        update={"task": "boundary", "classes": BOUNDARY_CLASSES, "activation": "identity",
                "architecture": Architecture(library="builtin", name=f"dense-{card.name}")}
    )
    return dense, as_boundary


def resolve_models(
    semantic: str | None, instance: str | None
) -> tuple[nn.Module, ModelSpec]:
    """The network and spec for a run's ``semantic`` and/or ``instance`` model.

    Raises
    ------
    ConfigError
        Neither is given; the instance model is not a boundary model; the two
        read different bands or scale them differently; a task the engine
        cannot run.
    ModelLoadError
        A model cannot be loaded (see :func:`~terraseg.models.loading.load_model`).
    """
    if not semantic and not instance:
        raise ConfigError("give a model: models.semantic and/or models.instance (e.g. "
                          "demo-instance)")
    if instance:
        inst_net, inst_card = _instance_model(instance)
        if inst_card.task != "boundary":
            raise ConfigError(
                f"models.instance '{instance}' is a {inst_card.task} model (no building edge "
                "class, so touching buildings cannot be told apart); name it under "
                "models.semantic, or give an instance model such as demo-instance"
            )
        if not semantic:
            return inst_net, inst_card.to_spec()
    assert semantic is not None
    sem_net, sem_card = load_model(semantic)
    _check_runnable(sem_card, "semantic")
    if sem_card.task == "detection":
        if instance:
            raise ConfigError(
                f"models.semantic '{semantic}' is a detection model; name it under "
                "models.instance and a semantic model (for roads) under models.semantic"
            )
        sem_net, sem_card = _instance_model(semantic)
    if not instance:
        return sem_net, sem_card.to_spec()
    if sem_card.input != inst_card.input:
        raise ConfigError(
            f"models.semantic '{semantic}' and models.instance '{instance}' read their input "
            f"differently ({sem_card.input.model_dump()} vs {inst_card.input.model_dump()}); "
            "pair models trained on the same bands and scaling"
        )
    sem_spec, inst_spec = sem_card.to_spec(), inst_card.to_spec()
    net = PairedNet(sem_net, inst_net, sem_spec, inst_spec).eval()
    spec = ModelSpec(
        name=f"{sem_spec.name}+{inst_spec.name}",
        task="boundary",
        input=inst_spec.input,
        classes=BOUNDARY_CLASSES,
        activation="identity",
        tile_px=inst_spec.tile_px,
        overlap_px=inst_spec.overlap_px,
        building_min_score=inst_spec.building_min_score,  # the scores are the instance model's
        building_min_area_m2=inst_spec.building_min_area_m2,
    )
    return net, spec
