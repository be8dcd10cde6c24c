"""Model loading: the bundled default, torchvision with weight files, safety of pickles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from skimage import data

import camlens
from camlens.models import LITE_PREPROCESS, Preprocess, imagenet_labels, load_model


@pytest.fixture(scope="module")
def default_model():
    return load_model()


def test_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[281] == "tabby" and labels[967] == "espresso"


def test_default_model_predicts_the_sample_photos(default_model):
    model, pre, labels = default_model
    assert pre == LITE_PREPROCESS
    x = torch.stack([pre(data.chelsea()), pre(data.coffee())])
    with torch.no_grad():
        probs = model(x).softmax(1)
    top = probs.argmax(1).tolist()
    assert 281 <= top[0] <= 285, labels[top[0]]  # a domestic cat
    assert labels[top[1]] in ("espresso", "cup")
    assert not model.training


def test_lite_preprocessing_beats_imagenet_statistics(default_model):
    """EfficientNet-Lite's TF weights expect (x - 127) / 128: clearly more confident."""
    model, _, _ = default_model
    imagenet = Preprocess()
    with torch.no_grad():
        p_lite = model(LITE_PREPROCESS(data.coffee())[None]).softmax(1).max()
        p_imnet = model(imagenet(data.coffee())[None]).softmax(1).max()
    assert p_lite > p_imnet + 0.05


def test_preprocess_crop_box():
    pre = Preprocess(256, 224)
    assert pre.crop_box(300, 451) == (94, 19, 356, 281)
    x = pre(np.zeros((300, 451, 3), np.uint8))
    assert x.shape == (3, 224, 224)


def test_torchvision_state_dict_with_weights_only(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model, pre, labels = load_model("torchvision:resnet18", weights=tmp_path / "r18.pth")
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert pre.crop == 224 and labels[0] == "tench"
    with pytest.raises(ValueError, match="resnet18"):
        load_model("torchvision:resnet1")
    with pytest.raises(ValueError, match="--weights"):
        load_model("torchvision:resnet18")  # nothing cached, nothing downloaded


def test_files_state_dict_torchscript_and_pickles(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="state dict.*--model torchvision"):
        load_model(str(tmp_path / "sd.pt"))

    torch.jit.script(net).save(str(tmp_path / "ts.pt"))
    scripted, _, labels = load_model(str(tmp_path / "ts.pt"))
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert labels == ["class 0", "class 1", "class 2"]
    with pytest.raises(TypeError, match="TorchScript.*eager"):
        camlens.explain(scripted, torch.randn(1, 3, 8, 8))

    torch.save(net, tmp_path / "full.pt")
    with pytest.raises(ValueError, match="trust"):
        load_model(str(tmp_path / "full.pt"))
    with pytest.warns(UserWarning, match="weights_only=False"):
        model, _, _ = load_model(str(tmp_path / "full.pt"), trust=True)
    assert torch.equal(model[0].weight, net[0].weight)


def test_unknown_spec():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        load_model("efficientnet-lite9")


def test_explaining_the_default_model(default_model):
    model, pre, _ = default_model
    x = pre(data.chelsea())[None]
    explainer = camlens.Explainer(model, "gradcam")
    maps = explainer(x)
    assert explainer.layer_names == ["_swish"]  # the head's activation, which feeds GAP
    cam = camlens.explain(model, x, method="cam")
    assert torch.allclose(maps, cam, atol=1e-4)


def test_torchvision_weights_from_the_local_cache(tmp_path, monkeypatch):
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), checkpoints / weights.url.rsplit("/", 1)[1])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model, _, _ = load_model("torchvision:resnet18")
    assert torch.equal(model.conv1.weight, net.conv1.weight)


def test_timm_with_a_weights_file(tmp_path):
    import timm  # an optional backend; the test extra installs it
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "t.pth")
    model, pre, labels = load_model("timm:resnet18", weights=tmp_path / "t.pth")
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert pre.crop == 224 and len(labels) == 1000
    maps = camlens.explain(model, pre(data.chelsea())[None])
    assert maps.shape == (1, 224, 224)
    with pytest.raises(ValueError, match="--weights"):
        load_model("timm:resnet18")  # no cached weights, and nothing is downloaded


def test_timm_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    net = timm.create_model("resnet18", pretrained=False)
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    asked = []

    def cached(repo, filename, **kwargs):
        asked.append((repo, filename))
        return str(tmp_path / filename) if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    model, _, _ = load_model("timm:resnet18")
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert asked[0] == (net.pretrained_cfg["hf_hub_id"], "model.safetensors")


def test_messages_name_python_arguments_and_the_cli_flags(tmp_path, monkeypatch):
    """From Python the fix is weights=FILE / trust=True; the flags come second."""
    import camlens.models as models

    monkeypatch.setattr(models, "_timm_cached_weights", lambda model: None)
    with pytest.raises(ValueError, match=r"timm:resnet18: pass weights=FILE \(or --weights FILE "
                                         r"on the command line\)"):
        load_model("timm:resnet18")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(ValueError, match=r"torchvision:resnet18: pass weights=FILE \(or "
                                         r"--weights FILE on the command line\)"):
        load_model("torchvision:resnet18")

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    torch.save(net, tmp_path / "full.pt")
    with pytest.raises(ValueError, match=r"pass trust=True \(--trust-model on the command"):
        load_model(str(tmp_path / "full.pt"))
    with pytest.raises(ValueError, match=r"load_model\(FILE, trust=True\) \(--model FILE "
                                         r"--trust-model on the command line\)"):
        load_model("torchvision:resnet18", weights=tmp_path / "full.pt")  # a model as weights
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"load_model\('torchvision:resnet50', weights='"):
        load_model(str(tmp_path / "sd.pt"))
    torch.jit.script(net).save(str(tmp_path / "ts.pt"))
    with pytest.raises(ValueError, match=r"weights=FILE \(--weights\) goes with an architecture"):
        load_model(str(tmp_path / "ts.pt"), weights=tmp_path / "sd.pt")
    listed = dict(models.available_models())
    assert "weights=FILE" in listed["torchvision:NAME"] and "trust=True" in listed["FILE.pt"]


def test_preprocess_view_matches_the_crop_box():
    pre = Preprocess(256, 224)
    photo = data.chelsea()  # 451 x 300
    view = pre.view(photo)
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
    x0, y0, x1, y1 = pre.crop_box(300, 451)
    crop = torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1).float()[None]
    small = torch.nn.functional.interpolate(crop, size=(224, 224), mode="bilinear",
                                            antialias=True, align_corners=False)
    small = small[0].permute(1, 2, 0).round().numpy()
    assert np.abs(small - view).mean() < 2  # the same part of the photo
    # normalised, the view is the model's input (up to uint8 rounding)
    x = (torch.from_numpy(view).permute(2, 0, 1) / 255 - torch.tensor(pre.mean).view(3, 1, 1)
         ) / torch.tensor(pre.std).view(3, 1, 1)
    assert (x - pre(photo)).abs().max() <= 0.5 / 255 / min(pre.std) + 1e-6


def test_bundled_model_is_the_package_function_channels_last_and_ablation_shortcut():
    # camlens runs its bundled model channels-last and with a forward that reads the batch
    # size from the features: the same function as the package's, and Ablation-CAM's
    # shortcut (the part before the layer once per chunk) then applies to it.
    from efficientnet_lite_pytorch import EfficientNet

    model, _, _ = camlens.load_model()
    assert model._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(model.state_dict())
    original.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), original(x), atol=1e-4)
    forwards = []
    ours = camlens.explain(model, x, "ablationcam", progress=lambda d, t: forwards.append(d))
    ref = camlens.explain(original, x, "ablationcam")  # the package's forward: the fallback
    assert torch.allclose(ours, ref, atol=1e-4)
    acts = {}
    handle = model._swish.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    with torch.no_grad():
        model(x)  # the last call of the shared _swish is the auto layer
    handle.remove()
    live = int(acts["a"].flatten(2).ne(0).any(-1).sum())
    assert live < 2 * 1280 and forwards[-1] == live + 2  # zero channels are not ablated
