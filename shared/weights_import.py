"""Bring a plain PyTorch state dict into a FedRad architecture: map the keys, adapt the stem, keep the head fresh.

A hospital or coordinator starts from weights that were never FedRad's: ImageNet weights saved from
torchvision, a torchxrayvision DenseNet, a colleague's checkpoint. Such a file has no architecture, classes or
preprocessing, its keys follow another library's names (or carry a ``module.`` / ``model.`` wrapper prefix),
its first convolution takes RGB, and its classifier has another number of outputs. :func:`import_state_dict`
places every tensor it can onto the FedRad model and says, in an :class:`ImportReport`, what it did with each
key: nothing is silently dropped, renamed or left at its initial value.

How a tensor finds its place, in order:

1. the file is unwrapped (``{'state_dict': ...}``, ``{'model': ...}``, …) and known wrapper prefixes stripped;
2. both sides' names are written the same way (:data:`ALIASES`: MONAI's ``denselayerN.layers.norm1`` and
   torchvision's legacy ``denselayerN.norm.1`` are torchvision's ``denselayerN.norm1``), then matched by
   name and shape;
3. what is left is matched by position when the two remaining sequences agree tensor for tensor in kind and
   shape (torchvision's ``features.1.0.block…`` EfficientNet against MONAI's ``_blocks.0.0…``: the same
   network, registered in the same order under other names);
4. the model's first convolution takes the file's RGB filters summed into one channel; a classifier whose
   shape differs (another number of outputs) stays at its fresh initialisation.

Why the sum (and not the mean) of the RGB filters: a radiograph fed to an RGB network is a grey image with
R = G = B = x, on which the RGB filters respond with ``(w_R + w_G + w_B) * x``. The summed filter gives
exactly that response on the one-channel image, so the next BatchNorm's statistics and every later layer see
what they were trained on; the mean would shrink the first layer's output three-fold (timm's
``adapt_input_conv`` sums for the same reason).
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.modelfile import ModelFileError

# Where checkpoints keep their weights: {'state_dict': ...} (Lightning, many scripts), {'model': ...} (DeiT,
# detectron-style), {'model_state_dict': ...} (the PyTorch tutorial), ...; looked for in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params", "ema")
# Prefixes a wrapper puts before every key: DataParallel/DDP, a Lightning module's attribute, torch.compile.
KNOWN_PREFIXES = ("module.", "model.", "net.", "network.", "backbone.", "encoder.", "_orig_mod.")
COUNTER_SUFFIX = "num_batches_tracked"  # BatchNorm's step counter: not a weight; older files do not have it
MIN_PLACED_FRACTION = 0.5  # of the model's parameters outside its head: below it the file is another network

# Each rule rewrites a key into torchvision's naming, applied to the file's keys and the model's alike.
ALIASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(.*\bdenselayer\d+)\.layers\.(?=(?:norm|relu|conv)[12]\.)"), r"\1."),  # MONAI DenseNet
    (re.compile(r"^(.*\bdenselayer\d+)\.(norm|relu|conv)\.([12])\.(?=[a-z_]+$)"), r"\1.\2\3."),  # legacy files
    (re.compile(r"^class_layers\.out\."), "classifier."),  # MONAI DenseNet's head
)
# What a file's keys say about the network it holds (to name it when it does not fit the model).
_FAMILIES = (
    ("denselayer", "a DenseNet"),
    ("layer4.", "a ResNet"),
    ("_blocks.", "an EfficientNet (MONAI / efficientnet_pytorch layout)"),
    (".block.", "an EfficientNet or ConvNeXt (torchvision layout)"),
)
_SHOW = 20  # names per list in printed reports; the full lists stay in the provenance


class WeightsImportError(ModelFileError):
    """A weights file cannot start this model; the message names the file and what to do."""


@dataclass
class ImportReport:
    """What :func:`import_state_dict` did with every key: kept in the model's provenance, printed by the command."""

    file: str
    file_sha256: str
    architecture: str
    container: str = ""  # where in the file the state dict was, e.g. "['state_dict']"
    prefixes: dict[str, int] = field(default_factory=dict)  # wrapper prefix → keys it was stripped from
    tensors: int = 0  # the model's state-dict tensors (BatchNorm counters not counted)
    placed: int = 0  # … loaded from the file
    placed_by_position: int = 0  # … of which matched by position (step 3), not by name
    params: int = 0  # the model's parameter elements
    params_placed: int = 0
    first_conv: str = ""  # how the stem was adapted, if it was
    head: list[str] = field(default_factory=list)  # the model's classifier keys
    unplaced: dict[str, str] = field(default_factory=dict)  # file key → why it was not placed
    left_at_init: list[str] = field(default_factory=list)  # model keys no tensor of the file reached
    counters_reset: int = 0  # BatchNorm step counters the file had none for (they restart at 0)

    @property
    def head_fresh(self) -> bool:
        return bool(self.head) and all(k in self.left_at_init for k in self.head)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a model file's provenance."""
        return {"kind": "state-dict", **asdict(self)}

    def lines(self, full_report: str = "") -> list[str]:
        """The report as a person reads it; ``full_report`` says where the lists are kept whole."""
        share = self.params_placed / self.params if self.params else 0.0
        out = [
            f"init weights: {self.file} (sha256 {self.file_sha256[:16]}…)"
            + (f", the state dict under {self.container}" if self.container else ""),
            f"  placed {self.placed} of {self.tensors} tensors of {self.architecture} "
            f"({share:.1%} of its parameters)"
            + (
                f", {self.placed_by_position} of them by position (same network, other names)"
                if self.placed_by_position
                else ""
            ),
        ]
        if self.prefixes:
            out.append("  stripped " + ", ".join(f"{p!r} from {n} keys" for p, n in self.prefixes.items()))
        if self.first_conv:
            out.append(f"  first convolution {self.first_conv}")
        if self.head:
            state = "left at its fresh init (trained by the task)" if self.head_fresh else "loaded from the file"
            out.append(f"  head {', '.join(self.head)}: {state}")
        out += _listed("not placed from the file", [f"{k}: {why}" for k, why in self.unplaced.items()], full_report)
        out += _listed("model tensors left at their fresh init", self.left_at_init, full_report)
        if self.counters_reset:
            out.append(f"  {self.counters_reset} BatchNorm step counters ({COUNTER_SUFFIX}) restart at 0")
        return out


def _listed(title: str, items: list[str], full_report: str) -> list[str]:
    if not items:
        return [f"  {title}: none"]
    more = len(items) - _SHOW
    tail = [f"    … and {more} more" + (f" (all of them: {full_report})" if full_report else "")] if more > 0 else []
    return [f"  {title} ({len(items)}):", *(f"    {x}" for x in items[:_SHOW]), *tail]


def canonical(key: str) -> str:
    """``key`` in torchvision's naming (:data:`ALIASES`), so the same layer has one name on both sides."""
    for pattern, repl in ALIASES:
        key = pattern.sub(repl, key)
    return key


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, never code; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsImportError(f"{path}: weights file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise WeightsImportError(f"{path}: permission denied (check the file's owner and mode)") from None
    except Exception as exc:  # torch raises many types for foreign files; say which case this is
        torch_file = head.startswith((b"PK\x03\x04", b"\x80"))  # a zip archive, or the legacy pickle format
        if path.suffix == ".safetensors":
            why = (
                "it is a safetensors file; convert it once with "
                "`python -c \"import torch, safetensors.torch as s; torch.save(s.load_file('IN'), 'OUT.pt')\"`"
            )
        elif torch_file and isinstance(exc, pickle.UnpicklingError):
            why = (
                "it holds pickled Python objects (a whole model?), which FedRad never unpickles because that runs "
                "code; save the weights alone with torch.save(model.state_dict(), path)"
            )
        else:
            why = f"it is not a PyTorch file, or it is damaged ({type(exc).__name__})"
        raise WeightsImportError(f"{path}: cannot read the weights: {why}") from None


def _is_state_dict(obj: Any) -> bool:
    values = list(obj.values()) if isinstance(obj, Mapping) else []
    tensors = sum(isinstance(v, torch.Tensor) for v in values)
    return tensors > 0 and tensors >= len(values) / 2


def unwrap_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor | Any], str]:
    """The state dict inside a checkpoint (:data:`CONTAINER_KEYS`), and where it was, e.g. ``"['state_dict']"``."""
    trail = ""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise WeightsImportError(
                f"{source}: no state dict found (top-level keys {keys}); FedRad looks for a mapping of tensors, "
                f"or one under {', '.join(repr(k) for k in CONTAINER_KEYS)}"
            )
        obj, trail = obj[inner], f"{trail}[{inner!r}]"
    if not isinstance(obj, Mapping):
        raise WeightsImportError(f"{source}: holds a {type(obj).__name__}, not a state dict (a mapping of tensors)")
    return {str(k): v for k, v in obj.items()}, trail


def _strip_prefixes(keys: list[str], model_top: set[str]) -> tuple[dict[str, str], dict[str, int]]:
    """file key → key without wrapper prefixes (a prefix that is one of the model's own modules stays)."""
    renamed, counts = {}, {}
    for key in keys:
        new = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in KNOWN_PREFIXES:
                if new.startswith(prefix) and prefix[:-1] not in model_top:
                    new, stripped = new[len(prefix) :], True
                    counts[prefix] = counts.get(prefix, 0) + 1
        renamed[key] = new
    return renamed, counts


def _first_conv_and_head(model: nn.Module) -> tuple[str, list[str]]:
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), "")
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = [f"{linear[-1]}.{p}" for p, _ in model.get_submodule(linear[-1]).named_parameters()] if linear else []
    return (f"{first}.weight" if first else ""), head


def _stem_fits(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """The file's first convolution has more input channels than the model's one: (O, C, k, k) onto (O, 1, k, k)."""
    return (
        src.dim() == dst.dim() >= 3
        and dst.shape[1] == 1
        and src.shape[1] > 1
        and src.shape[0] == dst.shape[0]
        and src.shape[2:] == dst.shape[2:]
    )


def _guess_family(keys: list[str]) -> str:
    for marker, family in _FAMILIES:
        if any(marker in k for k in keys):
            return family
    return "another network"


def import_state_dict(
    model: nn.Module, state: Mapping[str, Any], *, architecture: str, source: str, sha256: str = "", container: str = ""
) -> ImportReport:
    """Load what fits of ``state`` into ``model`` (in place) and report every key; ``source`` names the file.

    :class:`WeightsImportError` when less than :data:`MIN_PLACED_FRACTION` of the model's parameters outside
    its head found a tensor: the file holds another network, and starting from it would be a silent mistake.
    """
    target = model.state_dict()
    first_conv, head = _first_conv_and_head(model)
    renamed, prefixes = _strip_prefixes(list(state), {k.split(".")[0] for k in target})
    by_canon = {canonical(k): k for k in target}
    report = ImportReport(
        file=source, file_sha256=sha256, architecture=architecture, container=container, prefixes=prefixes, head=head
    )
    loaded: dict[str, torch.Tensor] = {}
    claimed: set[str] = set()  # model keys a file key named, loaded or not
    pending: list[str] = []  # file keys no model key is called like

    def place(src_key: str, dst: str, value: torch.Tensor) -> bool:
        ref = target[dst]
        if value.shape == ref.shape:
            loaded[dst] = value.to(ref.dtype)
        elif dst == first_conv and _stem_fits(value, ref):
            loaded[dst] = value.to(ref.dtype).sum(dim=1, keepdim=True)
            report.first_conv = (
                f"{dst}: the file's {value.shape[1]} input channels summed into 1 (from {src_key}; a grey image "
                "then gets the response the RGB filters give it with R = G = B)"
            )
        else:
            where = " (the head: it stays at its fresh init)" if dst in head else ""
            report.unplaced[src_key] = f"shape {list(value.shape)} in the file, {list(ref.shape)} at {dst}{where}"
            return False
        return True

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.unplaced[key] = f"a {type(value).__name__}, not a tensor"
            continue
        dst = by_canon.get(canonical(renamed[key]))
        if dst is None:
            pending.append(key)
        elif dst in claimed:
            report.unplaced[key] = f"a second tensor for {dst}"
        else:
            claimed.add(dst)
            place(key, dst, value)

    free = [k for k in target if k not in claimed]
    for src, dst in ((pending, free), _without_counters(pending, free)):  # older files have no counters
        if src and _aligned(src, dst, state, target, first_conv, head):
            for src_key, dst_key in zip(src, dst, strict=True):
                claimed.add(dst_key)
                if place(src_key, dst_key, state[src_key]) and not dst_key.endswith(COUNTER_SUFFIX):
                    report.placed_by_position += 1
            matched = set(src)
            pending = [k for k in pending if k not in matched]
            break
    for key in pending:
        report.unplaced[key] = f"no layer of {architecture} is called like it"

    report.tensors = sum(not k.endswith(COUNTER_SUFFIX) for k in target)
    report.placed = sum(not k.endswith(COUNTER_SUFFIX) for k in loaded)
    report.left_at_init = [k for k in target if k not in loaded and not k.endswith(COUNTER_SUFFIX)]
    report.counters_reset = sum(k.endswith(COUNTER_SUFFIX) and k not in loaded for k in target)
    params = dict(model.named_parameters())
    report.params = sum(p.numel() for p in params.values())
    report.params_placed = sum(params[k].numel() for k in loaded if k in params)
    body = {k: p.numel() for k, p in params.items() if k not in head}
    share = sum(n for k, n in body.items() if k in loaded) / max(1, sum(body.values()))
    if share < MIN_PLACED_FRACTION:
        named = [k for k in state if isinstance(state[k], torch.Tensor)]
        raise WeightsImportError(
            f"{source}: does not fit {architecture}: "
            + (
                f"only {share:.0%} of its parameters found a tensor of the same name and shape"
                if loaded
                else "none of its layers found a tensor of the same name and shape"
            )
            + f" (the file's {len(named)} tensors look like {_guess_family(named)}, e.g. {', '.join(named[:3])}); "
            f"bring weights of a {architecture}, or set the task's model to the file's network"
        )
    merged = {**target, **loaded}
    model.load_state_dict(merged)
    return report


def _without_counters(*keys: list[str]) -> tuple[list[str], ...]:
    return tuple([k for k in ks if not k.endswith(COUNTER_SUFFIX)] for ks in keys)


def _aligned(
    src: list[str],
    dst: list[str],
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    first_conv: str,
    head: list[str],
) -> bool:
    """The two remaining sequences are one network in the same order: same length, kind and shape tensor by
    tensor (the stem may differ in input channels, the head in outputs)."""
    if len(src) != len(dst):
        return False
    for s, d in zip(src, dst, strict=True):
        a, b = state[s], target[d]
        if s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:  # weight / bias / running_mean / running_var
            return False
        if a.shape != b.shape and not (d == first_conv and _stem_fits(a, b)) and not (d in head and a.dim() == b.dim()):
            return False
    return True


def import_weights_file(model: nn.Module, path: str | Path, *, architecture: str) -> ImportReport:
    """Read a plain PyTorch weights file and :func:`import_state_dict` it into ``model``."""
    path = Path(path)
    state, container = unwrap_state_dict(read_torch_file(path), str(path))
    return import_state_dict(
        model, state, architecture=architecture, source=str(path), sha256=file_sha256(path), container=container
    )
