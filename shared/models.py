"""Model architectures by name, so a config or a model file can say which network to build.

Every model takes (B, 1, S, S) float32 images and returns (B, num_classes) logits.
Weights are always randomly initialised here: FedRad never downloads pretrained
weights (sites may have no internet, and the provenance of every weight must be
the consortium's own training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

GROUPS = 8  # GroupNorm groups in smallcnn-gn (fewer where a layer has fewer channels)
# Architectures without BatchNorm: the ones per-image DP (DP-SGD) can train.
BATCHNORM_FREE_MODELS = ("smallcnn-gn", "smallcnn-gn-eq")
INTENSITY_LAYERS = ("none", "equalize")  # what a SmallCNN does to its input first (shared.intensity)
BACKBONE_MIN_SIZE = 32  # densenet121, resnet50, efficientnet_b0 downsample 32-fold before the head

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)


class SmallCNN(nn.Module):
    """A small 2D CNN that trains in minutes on a CPU: the default FedRad model.

    Four blocks of 3×3 conv → BatchNorm2d → ReLU → 2×2 max-pool, then global
    average pooling, dropout and a linear classifier.

    Why BatchNorm (not GroupNorm): on small batches of X-rays BN trains faster
    and to a better optimum in our setting, and its affine parameters plus
    running statistics are exactly the per-site state that FedBN keeps local
    (scanner/vendor intensity differences live there). The BN layers are plain
    ``nn.BatchNorm2d`` modules so :func:`norm_layer_names` can find them.

    ``norm="group"`` (registered as ``smallcnn-gn``) swaps BatchNorm for
    GroupNorm: per-image differential privacy (DP-SGD, :mod:`shared.private_training`)
    needs each image's gradient on its own, and BatchNorm mixes the images of a batch.

    ``intensity="equalize"`` (registered as ``smallcnn-eq`` and ``smallcnn-gn-eq``) first replaces each image by
    its histogram-equalised self (:class:`shared.intensity.HistogramEqualize`): a lever against scanner contrast
    curves that adds no parameters, so the state dict is the plain model's.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
        norm: str = "batch",
        intensity: str = "none",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"smallcnn: norm must be 'batch' or 'group', got {norm!r}")
        if intensity not in INTENSITY_LAYERS:
            raise ValueError(f"smallcnn: intensity must be one of {', '.join(INTENSITY_LAYERS)}, got {intensity!r}")
        if image_size < 2 ** len(channels):
            raise ValueError(
                f"smallcnn: image_size {image_size} is too small for {len(channels)} pooling blocks "
                f"(need at least {2 ** len(channels)})"
            )
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # the norm layer supplies the bias
                nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(min(GROUPS, c_out), c_out),
                nn.ReLU(inplace=norm == "batch"),  # Opacus' per-example hooks forbid in-place ops
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.intensity: nn.Module = nn.Identity()  # no parameters either way: the same state-dict keys
        if intensity == "equalize":
            from shared.intensity import HistogramEqualize

            self.intensity = HistogramEqualize()
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.pool(self.features(self.intensity(x))).flatten(1)
        return self.classifier(self.dropout(x))


def _smallcnn(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    return SmallCNN(num_classes, image_size, **kwargs)


def _smallcnn_gn(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    return SmallCNN(num_classes, image_size, **{"norm": "group", **kwargs})


def _smallcnn_eq(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    return SmallCNN(num_classes, image_size, **{"intensity": "equalize", **kwargs})


def _smallcnn_gn_eq(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    return SmallCNN(num_classes, image_size, **{"norm": "group", "intensity": "equalize", **kwargs})


def _need_size(name: str, image_size: int, minimum: int) -> None:
    """Refuse an input the network cannot see: its strides shrink the image ``minimum``-fold before the head."""
    if image_size < minimum:
        raise ValueError(
            f"{name}: image_size {image_size} is too small; {name} needs at least {minimum} px "
            f"(it downsamples {minimum}-fold before its classifier). Use image_size {minimum} or more "
            "(clinical setting: 224-512)"
        )


def _backbone(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Mark a clinical backbone's builder with the smallest input it takes (config validation reads it)."""
    builder.min_image_size = BACKBONE_MIN_SIZE  # type: ignore[attr-defined]
    return builder


@_backbone
def _densenet121(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    from monai.networks.nets import DenseNet121

    _need_size("densenet121", image_size, BACKBONE_MIN_SIZE)
    kwargs.pop("pretrained", None)  # never download weights
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes, pretrained=False, **kwargs)


@_backbone
def _resnet50(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """ResNet-50 laid out as torchvision's (stride-2 7×7 stem, no bias in the shortcut convolutions), so an
    ImageNet state dict maps onto it name for name (:mod:`shared.weights_import`). MONAI's defaults (stride-1
    stem, shortcut bias) are MedicalNet's 3D layout and would cost 4× the compute at 224-512 px."""
    from monai.networks.nets import resnet50

    _need_size("resnet50", image_size, BACKBONE_MIN_SIZE)
    kwargs.pop("pretrained", None)  # never download weights
    options = {"conv1_t_stride": 2, "bias_downsample": False, **kwargs}
    return resnet50(pretrained=False, spatial_dims=2, n_input_channels=1, num_classes=num_classes, **options)


# EfficientNet-B0's stages (MONAI's EfficientNetBN table): repeats, kernel, stride, expansion, in/out channels, SE.
_EFFICIENTNET_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


@_backbone
def _efficientnet_b0(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """EfficientNet-B0 (5.3M parameters; ImageNet-level accuracy at a fifth of ResNet-50's compute).

    Built with MONAI's ``EfficientNet`` at the task's own ``image_size`` (its "same" padding is computed for
    the input size; ``EfficientNetBN`` fixes 224). MONAI's memory-efficient swish is a custom autograd function
    that ONNX cannot export; ``nn.SiLU`` is the same function as one native op (same memory in training)."""
    from monai.networks.nets import EfficientNet

    _need_size("efficientnet_b0", image_size, BACKBONE_MIN_SIZE)
    kwargs.pop("pretrained", None)  # never download weights
    options = {"dropout_rate": 0.2, "drop_connect_rate": 0.2, **kwargs}
    model = EfficientNet(
        _EFFICIENTNET_B0_BLOCKS,
        spatial_dims=2,
        in_channels=1,
        num_classes=num_classes,
        image_size=image_size,
        **options,
    )
    for module in model.modules():
        if hasattr(module, "_swish"):
            module._swish = nn.SiLU()
    return model


def _resnet18(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    from monai.networks.nets import resnet18

    kwargs.pop("pretrained", None)  # never download weights
    return resnet18(pretrained=False, spatial_dims=2, n_input_channels=1, num_classes=num_classes, **kwargs)


MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": _smallcnn,
    "smallcnn-gn": _smallcnn_gn,
    "smallcnn-eq": _smallcnn_eq,
    "smallcnn-gn-eq": _smallcnn_gn_eq,
    "densenet121": _densenet121,
    "resnet18": _resnet18,
    "resnet50": _resnet50,
    "efficientnet_b0": _efficientnet_b0,
}
# The clinical backbones: ImageNet-style networks for 224-512 px radiographs (tests run them at 32-64 px).
CLINICAL_BACKBONES = ("densenet121", "resnet50", "efficientnet_b0")


def build_model(name: str, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` outputs on (B, 1, image_size, image_size) inputs."""
    if name in MODEL_BUILDERS and num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return build_from(MODEL_BUILDERS, "model architecture", name, num_classes, image_size, **kwargs)


def build_from(builders: dict, kind: str, name: str, outputs: int, image_size: int, **kwargs) -> nn.Module:
    """``builders[name](outputs, image_size, **kwargs)``; an unknown name or keyword is a ValueError naming it."""
    builder = builders.get(name)
    if builder is None:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(builders))}")
    try:
        return builder(outputs, image_size, **kwargs)
    except TypeError as exc:  # a wrong keyword in arch kwargs
        raise ValueError(f"cannot build {name!r} with options {kwargs}: {exc}") from None


def norm_layer_names(model: nn.Module) -> set[str]:
    """State-dict keys of normalisation layers (weight, bias, running stats, num_batches_tracked).

    FedBN keeps exactly these keys local to each site and federates the rest.
    """
    keys: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{mod_name}." if mod_name else ""
            keys.update(prefix + k for k in module.state_dict().keys())
    return keys
