import pytest
import torch

from robust_sabn import CheckpointError, ConfigError, create_model, list_models, use_route

EXPECTED = {"preact_resnet18", "resnet18", "resnet34", "resnet50", "resnet_small", "wide_resnet28_10",
            "wide_resnet34_10"}


def test_registry_lists_the_zoo_and_names_known_models_on_a_typo():
    assert EXPECTED <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("norm", ["bn", "sandwich", "dual"])
def test_state_dict_keys_survive_robustbench_key_mangling(name, norm):
    keys = create_model(name, norm=norm).state_dict().keys()
    assert not [k for k in keys if "model." in k or "module." in k]


def test_known_parameter_counts_with_plain_bn():
    # the Wide ResNets match the published sizes (WRN-28-10 36.48M, WRN-34-10 46.16M parameters)
    count = {name: sum(p.numel() for p in create_model(name).parameters()) for name in EXPECTED}
    assert count["wide_resnet28_10"] == 36_479_194
    assert count["wide_resnet34_10"] == 46_160_474
    assert count["resnet18"] == 11_173_962  # torchvision's 11.69M minus the 7x7 stem and 1000-class head


def test_normalization_is_inside_the_model_and_grayscale_works():
    model = create_model("resnet_small", width=4, in_channels=1, mean=[0.3], std=[0.2], num_classes=7).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 7)
    shifted = create_model("resnet_small", width=4, in_channels=1, num_classes=7).eval()
    shifted.load_state_dict(model.state_dict())
    assert torch.allclose(shifted(x), model(x))  # the mean/std buffers travel with the weights
    reference = create_model("resnet_small", width=4, in_channels=1, num_classes=7).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["normalize.mean"].zero_()
    state["normalize.std"].fill_(1.0)
    reference.load_state_dict(state)
    assert torch.allclose(reference((x - 0.3) / 0.2), model(x), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 2}, "in_channels must be 1 or 3"),
    ({"mean": [0.5, 0.5]}, "one per input channel"),
    ({"std": [1, 0, 1]}, r"std must be a number in \(0, 1000\], got 0"),
    ({"norm": "group"}, "unknown norm 'group'"),
    ({"conv": "fancy"}, "unknown conv 'fancy'"),
    ({"width": 0}, r"width must be an integer in \[1, 1024\], got 0"),
    ({"width": 4.5}, "width of resnet_small must be an integer, got 4.5"),
    ({"width": True}, "width of resnet_small must be an integer, got True"),
    ({"width": 512, "depth": 8}, "would hold about 793 million parameters, more than the 400 million"),
    ({"num_classes": 10**30}, r"num_classes must be an integer in \[2, 100000\]"),
    ({"routes": ["a", "a"]}, "distinct names"),
    ({"norm": "sandwich", "norm_kwargs": {"momentum": 2.0}}, r"momentum must be a number in \[0, 1\]"),
    ({"norm": "bn", "norm_kwargs": {"device": "meta"}}, "norm 'bn' takes no argument 'device'"),
    ({"blocks": [9, 9, 9]}, "resnet_small takes no argument 'blocks' .it takes: width, depth."),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet_small", **kwargs)


def test_routed_zoo_model_routes_every_norm():
    model = create_model("preact_resnet18", norm="sandwich", routes=("a", "b", "c")).eval()
    with use_route(model, "c"):
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_model_spec_rebuilds_the_same_architecture():
    from robust_sabn.models import build_model

    model = create_model("resnet_small", width=6, norm="sandwich", in_channels=1, num_classes=4)
    clone = build_model(model.model_spec)
    clone.load_state_dict(model.state_dict())
    assert clone.model_spec == model.model_spec
    resnet = {"callable": "torchvision.models:resnet18", "kwargs": {"num_classes": 3}}
    assert build_model(resnet, trusted="torchvision.models:resnet18").fc.out_features == 3
    with pytest.raises(CheckpointError, match="never runs code because a file names it"):
        build_model(resnet)  # a callable runs only when the caller names it
    with pytest.raises(ConfigError, match="cannot import"):
        build_model({"callable": "no_such_module:f"}, trusted="no_such_module:f")
    with pytest.raises(ConfigError, match="needs exactly one of 'arch'"):
        build_model({"kwargs": {}})
