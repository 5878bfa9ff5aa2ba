"""State dicts laid out exactly as torchvision's ImageNet backbones, without torchvision.

``tests/data/torchvision_layouts.json`` records torchvision's key names, order and shapes
(``tests/data/record_torchvision_layouts.py`` regenerates it); the values here are random, so every tensor FedRad
places can be traced back to the one it came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

LAYOUTS = json.loads((Path(__file__).parent / "data" / "torchvision_layouts.json").read_text())["layouts"]


def torchvision_state(name: str, seed: int = 0, *, channels: int = 3, classes: int = 1000) -> dict:
    """A state dict laid out as torchvision's ``name`` (3 channels, 1000 classes unless told), random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (key, shape) in enumerate(LAYOUTS[name]):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + i)
            continue
        if i == 0:
            shape = [shape[0], channels, *shape[2:]]
        if key.endswith(("classifier.weight", "classifier.1.weight", "fc.weight")):
            shape = [classes, shape[1]]
        elif key.endswith(("classifier.bias", "classifier.1.bias", "fc.bias")):
            shape = [classes]
        value = torch.rand(shape, generator=g) + 0.5 if key.endswith("running_var") else torch.randn(shape, generator=g)
        state[key] = value
    return state


def monai_densenet_key(key: str) -> str:
    """torchvision's DenseNet name → the name of the same tensor in FedRad's (MONAI's) densenet121."""
    key = re.sub(r"(denselayer\d+)\.", r"\1.layers.", key)
    return key.replace("classifier.", "class_layers.out.")
