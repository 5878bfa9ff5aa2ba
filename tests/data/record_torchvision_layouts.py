"""Write ``torchvision_layouts.json``: the state-dict keys and shapes of torchvision's ImageNet backbones.

FedRad does not depend on torchvision, yet hospitals bring weights saved from it. The tests rebuild such files
from this record (random values, torchvision's exact names, order and shapes), so the import is tested against
the real layout without torchvision installed. Regenerate with a torchvision of your choice installed::

    python tests/data/record_torchvision_layouts.py
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ("densenet121", "resnet50", "efficientnet_b0")


def main() -> None:
    import torchvision
    from torchvision import models

    layouts = {
        name: [[k, list(v.shape)] for k, v in getattr(models, name)(weights=None).state_dict().items()]
        for name in MODELS
    }
    doc = {"torchvision": torchvision.__version__, "weights": "None (ImageNet layout: 3 channels, 1000 classes)"}
    out = Path(__file__).with_name("torchvision_layouts.json")
    out.write_text(json.dumps({**doc, "layouts": layouts}, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
