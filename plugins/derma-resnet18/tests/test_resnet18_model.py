"""The network and its weights: none, PATH (safe loading), imagenet (hub cache, offline error)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.models import resnet18

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_resnet18 import model as M

THREE = LabelSet(codes=("a", "b", "c"))


@pytest.mark.parametrize("label_set", [HAM, THREE, LabelSet(codes=("no", "yes"))], ids=["ham10000", "3", "2"])
def test_architecture_dropout_before_a_head_per_class(label_set):
    net = M.build_model("none", 0.2, label_set)
    k = len(label_set)
    assert isinstance(net.dropout, torch.nn.Dropout) and net.dropout.p == 0.2
    assert net.head.in_features == 512 and net.head.out_features == k
    assert isinstance(net.backbone.fc, torch.nn.Identity)
    net.eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, k)


def test_weights_path_torchvision_layout_loads_the_backbone(tmp_path):
    torch.manual_seed(0)
    tv = resnet18(weights=None)
    path = tmp_path / "tv.pt"
    torch.save(tv.state_dict(), path)
    net = M.build_model(str(path), 0.0, HAM)
    torch.testing.assert_close(net.backbone.conv1.weight, tv.conv1.weight)
    torch.testing.assert_close(net.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    # a 1000-way ImageNet fc does not fit the 7-way head: the head stays freshly initialised
    assert net.head.weight.shape == (7, 512)


def test_weights_path_derma_layout_and_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    src = M.DermaResNet18(7, 0.2)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"format": "x", "best_model": src.state_dict(), "model": {}}, tmp_path / "ckpt.pt")
    for name in ("plain.pt", "ckpt.pt"):
        net = M.build_model(str(tmp_path / name), 0.2, HAM)
        for (k, a), b in zip(src.state_dict().items(), net.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)


def test_weights_path_errors_are_one_line(tmp_path):
    with pytest.raises(M.WeightsError, match="does not exist"):
        M.build_model(str(tmp_path / "missing.pt"), 0.0, HAM)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(M.WeightsError) as info:
        M.build_model(str(garbage), 0.0, HAM)
    assert "\n" not in str(info.value) and "garbage.pt" in str(info.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(M.WeightsError, match="not a ResNet-18 state dict"):
        M.build_model(str(wrong), 0.0, HAM)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_weights_path_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(M.WeightsError, match="evil.pt"):
        M.build_model(str(path), 0.0, HAM)


def test_imagenet_weights_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = M.imagenet_cache_file()
    assert target.parent == tmp_path / "hub" / "checkpoints" and target.name == "resnet18-f37072fd.pth"
    torch.manual_seed(2)
    tv = resnet18(weights=None)  # stands in for the real file (no network in tests)
    target.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), target)

    def no_download(*a, **k):  # the cached file must be used without any download attempt
        raise AssertionError("tried to download although the file is cached")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    net = M.build_model("imagenet", 0.2, HAM)
    torch.testing.assert_close(net.backbone.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)


def test_imagenet_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(M.WeightsError) as info:
        M.build_model("imagenet", 0.2, HAM)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "model.weights=none" in message


def test_probability_model_matches_the_eval_path():
    from derma_resnet18.augment import eval_batch

    torch.manual_seed(3)
    net = M.DermaResNet18(7, 0.2).eval()
    images = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    wrapped = M.ProbabilityModel(net, 32).eval()
    with torch.no_grad():
        probs = wrapped(images)
        expected = torch.softmax(net(eval_batch(images, 32, channels_last=False)), dim=1)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))


def test_weights_path_of_another_label_set_is_refused_in_one_line(tmp_path):
    """A derma checkpoint records its classes: as model.weights it only loads on the same classes
    (a legacy /1 checkpoint holds HAM10000's seven)."""
    from derma_resnet18 import checkpoint as C

    src = M.DermaResNet18(3, 0.0)
    C.save_checkpoint(tmp_path / "three.pt", {"model": src.state_dict(), "labels": THREE.to_dict()})
    net = M.build_model(str(tmp_path / "three.pt"), 0.0, THREE)
    torch.testing.assert_close(net.head.weight, src.head.weight)
    other = LabelSet(codes=("a", "c", "b"))  # same classes, another order: the head would be wrong
    with pytest.raises(ValueError) as info:
        M.build_model(str(tmp_path / "three.pt"), 0.0, other)
    message = str(info.value)
    assert "\n" not in message and "a, b, c" in message and "a, c, b" in message
    seven = M.DermaResNet18(7, 0.0)
    torch.save({"format": C.LEGACY_FORMAT, "model": seven.state_dict()}, tmp_path / "legacy.pt")
    assert M.build_model(str(tmp_path / "legacy.pt"), 0.0, HAM).head.out_features == 7
    with pytest.raises(ValueError, match=", ".join(HAM.codes)):
        M.build_model(str(tmp_path / "legacy.pt"), 0.0, THREE)
