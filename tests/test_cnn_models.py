"""The CIFAR-style CNNs: sizes from the literature, input shapes, named features."""
from __future__ import annotations

import time

import pytest
import torch

from dglkd.errors import DglkdError
from dglkd.models import count_parameters
from dglkd.models.cnn import CNN_NAMES
from dglkd.models.registry import MODELS
from dglkd.models.tap import FeatureTap

# Parameters for 100 classes (CIFAR-100) as reported by the CRD / HKD papers' tables.
LITERATURE_MILLIONS = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet20": 0.28,
    "resnet56": 0.86,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.36,
}



# Tiny tensors: intra-op threads only add waiting (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


_BUILT: dict[tuple[str, int], torch.nn.Module] = {}


def built(name: str, channels: int) -> torch.nn.Module:
    """One 100-class model per (name, input channels), shared by the tests of this file."""
    key = (name, channels)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = MODELS.get(name)(100, (channels, 32, 32)).eval()
    return _BUILT[key]


def test_every_cnn_is_registered():
    assert set(LITERATURE_MILLIONS) <= set(CNN_NAMES)
    assert {"cnn_small", "cnn_tiny"} <= set(CNN_NAMES)
    assert all(name in MODELS for name in CNN_NAMES)


@pytest.mark.parametrize("name", sorted(LITERATURE_MILLIONS))
def test_parameter_count_matches_literature(name):
    millions = count_parameters(built(name, 3)) / 1e6
    assert millions == pytest.approx(LITERATURE_MILLIONS[name], rel=0.03)


def _forward_with_tap(model: torch.nn.Module, images: torch.Tensor):
    """Logits, the tapped features, and copies taken inside the hooks (to catch features
    that a later in-place op would overwrite)."""
    names = [*model.stage_names, "pool"]
    copies = {}
    handles = [
        model.get_submodule(model.feature_aliases[n]).register_forward_hook(
            lambda _m, _i, out, n=n: copies.__setitem__(n, out.detach().clone())
        )
        for n in names
    ]
    with torch.no_grad(), FeatureTap(model, names) as tap:
        logits = model(images)
        feats = tap.pop()
    for handle in handles:
        handle.remove()
    return logits, feats, copies


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 8, 8)])
def test_forward_and_named_features(name, shape):
    model = built(name, shape[0])
    assert model.stage_names == [f"stage{i}" for i in range(1, len(model.stage_names) + 1)]
    assert len(model.stage_names) >= 3
    logits, feats, copies = _forward_with_tap(model, torch.randn(2, *shape))
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    assert set(feats) == {*model.stage_names, "pool"}
    sizes = []
    for stage in model.stage_names:
        assert feats[stage].dim() == 4 and feats[stage].shape[0] == 2
        assert torch.equal(feats[stage], copies[stage]), f"{stage} changed after its hook"
        sizes.append(feats[stage].shape[-1])
    assert sizes == sorted(sizes, reverse=True)  # resolution never grows along the stages
    assert feats["pool"].shape == (2, model.fc.in_features)


@pytest.mark.parametrize(
    "name, stages",
    [
        ("resnet8x4", [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
        ("resnet20", [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
        ("wrn_40_2", [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
        ("vgg13", [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
        ("mobilenetv2", [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
        ("shufflenetv2", [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
    ],
)
def test_stage_shapes_on_cifar_input(name, stages):
    model = built(name, 3)
    _, feats, _ = _forward_with_tap(model, torch.randn(2, 3, 32, 32))
    assert [tuple(feats[s].shape[1:]) for s in model.stage_names] == stages


def test_small_cnns_take_width_options_and_train():
    model = MODELS.get("cnn_tiny")(10, (1, 28, 28), widths=[4, 8], convs_per_stage=2)
    assert model.stage_names == ["stage1", "stage2"]
    assert model.fc.in_features == 8
    images, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    teacher = MODELS.get("cnn_small")(10, (1, 28, 28))
    student = MODELS.get("cnn_tiny")(10, (1, 28, 28))
    assert count_parameters(teacher) > 20 * count_parameters(student)


@pytest.mark.parametrize(
    "name, in_features, options, message",
    [
        ("resnet8x4", (3, 32, 32), {"widen": 2}, "'widen'"),
        ("cnn_tiny", (1, 28, 28), {"widths": [8, 0]}, "widths"),
        ("cnn_small", (1, 28, 28), {"convs_per_stage": 0}, "convs_per_stage"),
        ("shufflenetv2", (3, 32, 32), {"net_size": 3}, "net_size"),
        ("mobilenetv2", (3, 32, 32), {"width_mult": 0.01}, "width_mult"),
        ("vgg8", 784, {}, "in_features"),
        ("vgg8", (3, 32), {}, "in_features"),
    ],
)
def test_bad_options_name_the_key(name, in_features, options, message):
    with pytest.raises(DglkdError, match=message) as info:
        MODELS.get(name)(10, in_features, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options", [{"widths": [32, 64, 128], "convs_per_stage": 2},
                                     {"widths": [4, 8], "convs_per_stage": 3}])
def test_the_small_cnns_size_estimate_is_their_parameter_count(options):
    from dglkd.models.cnn.small import plain_cnn_parameters

    model = MODELS.get("cnn_small")(10, (1, 28, 28), **options)
    assert plain_cnn_parameters(10, 1, **options) == count_parameters(model)


@pytest.mark.parametrize("options", [{"convs_per_stage": 2**31},  # the fuzz campaign's case
                                     {"convs_per_stage": 10**6, "widths": [1, 1, 1]}])
def test_a_cnn_too_deep_for_this_machine_is_refused_before_any_layer_is_built(options):
    from dglkd.models import build_model

    started = time.monotonic()
    with pytest.raises(DglkdError, match=r"^teacher: model 'cnn_small': training [\d,]+ conv "
                                         r"layers .* more than this machine's .* lower "
                                         r"convs_per_stage or widths$"):
        build_model("cnn_small", 10, (1, 28, 28), key="teacher", **options)
    assert time.monotonic() - started < 1.0


def test_a_too_deep_teacher_is_one_line_from_the_cli_before_anything_runs(cli, write_config,
                                                                          tmp_path):
    """The fault campaign's case (``teacher.convs_per_stage=2147483648`` on cnn_small) was
    killed for memory, leaving a run folder behind."""
    config = {"name": "deep", "seed": 0, "n_runs": 1,
              "data": {"name": "digits", "train_size": 64, "val_size": 32},
              "teacher": {"model": "cnn_small", "convs_per_stage": 2147483648},
              "student": {"model": "cnn_tiny"}, "method": {"name": "kd"},
              "teacher_train": {"epochs": 1, "batch_size": 32},
              "train": {"epochs": 1, "batch_size": 32}, "log": {"progress": False}}
    code, out, err = cli("distill", write_config(config), "--out", tmp_path / "runs")
    assert "failed before anything was trained" in out
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("dglkd: error: teacher: model 'cnn_small': training 6,442,450,944 "
                          "conv layers"), err
    assert [p.name for p in (tmp_path / "runs").glob("*") if p.name != "cache"] == []
