"""Reference models that slimkit can build by name (and rebuild from a checkpoint's JSON)."""

from torch import nn

from slimkit.errors import SlimkitError
from slimkit.models.cnn import SeedCNN, SourceModel, TargetModel
from slimkit.models.mobilenet import MobileNetV2Small
from slimkit.models.resnet import ResNetCifar
from slimkit.models.vit import SmallViT

# Classes a checkpoint may name. Loading never imports a class path from a file; it looks the name
# up here (or in the classes the caller passes), so a checkpoint cannot make slimkit import code.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "SourceModel": SourceModel,
    "TargetModel": TargetModel,
    "SeedCNN": SeedCNN,
    "ResNetCifar": ResNetCifar,
    "MobileNetV2Small": MobileNetV2Small,
    "SmallViT": SmallViT,
}

# Short names for the CLI and recipes.
MODEL_NAMES: dict[str, type[nn.Module]] = {
    "source": SourceModel,
    "target": TargetModel,
    "resnet": ResNetCifar,
    "mobilenetv2": MobileNetV2Small,
    "vit": SmallViT,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a reference model from its short name ('source', 'target') or class name."""
    cls = MODEL_NAMES.get(name) or MODEL_CLASSES.get(name)
    if cls is None:
        known = ", ".join(sorted(MODEL_NAMES) + sorted(MODEL_CLASSES))
        raise SlimkitError(f"unknown model {name!r}; choose one of: {known}")
    return cls(**kwargs)


__all__ = [
    "MODEL_CLASSES",
    "MODEL_NAMES",
    "MobileNetV2Small",
    "ResNetCifar",
    "SeedCNN",
    "SmallViT",
    "SourceModel",
    "TargetModel",
    "build_model",
]
