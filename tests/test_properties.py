"""Property-based tests of the input checks: whatever a user types or passes, the answer is a value of the right
kind or one ConfigError, never another exception."""
import argparse
import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust_sabn import create_model
from robust_sabn.cli import BENCHMARKS, numeric_flags
from robust_sabn.cli.flags import InRange, flag_help
from robust_sabn.errors import ConfigError
from robust_sabn.eval.evaluate import check_inputs, check_model_inputs
from robust_sabn.mixing import parse_tradeoffs
from robust_sabn.parsing import parse_number, parse_number_list
from robust_sabn.threat import EPS_RANGES, Threat
from robust_sabn.training.config import TrainConfig, _coerce

pytestmark = pytest.mark.usefixtures("one_thread")
checks = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])

number_words = st.sampled_from(["1e999", "-1e400", "1e-999999999", "inf", "-inf", "nan", "1/0", "8/255", "0x10",
                                "1_000", " 7 ", "2.5", "1" * 5000, "1" * 5000 + "/3", "3/" + "1" * 400, "", "--1"])
any_text = st.one_of(st.text(max_size=30), number_words,
                     st.builds(lambda a, b: f"{a}/{b}", st.integers(), st.integers()),
                     st.builds(lambda m, e: f"{m}e{e}", st.integers(-99, 99), st.integers(-2000, 2000)))
any_value = st.one_of(any_text, st.integers(min_value=-2**80, max_value=2**80), st.floats(), st.booleans(),
                      st.none(), st.lists(st.integers(-3, 300), max_size=3), st.lists(st.text(max_size=3), max_size=2))


@checks
@given(any_text)
def test_parse_number_is_a_finite_float_or_one_config_error(text):
    try:
        value = parse_number(text, "x")
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith("x ")
    else:
        assert isinstance(value, float) and math.isfinite(value)


@checks
@given(st.integers(-2**60, 2**60), st.integers(1, 2**60))
def test_fractions_parse_to_their_value(numerator, denominator):
    assert parse_number(f"{numerator}/{denominator}") == float(Fraction(numerator, denominator))
    assert parse_number(str(numerator)) == float(numerator) == parse_number(numerator)


@checks
@given(st.integers(-2**200, 2**200))
def test_integer_settings_are_exact(n):
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "max_steps")
    assert _coerce(field, str(n)) == n and _coerce(field, n) == n


@checks
@given(st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)]), any_value)
def test_any_value_for_any_setting_builds_a_config_or_is_one_config_error(name, value):
    try:
        config = TrainConfig(**{name: value})
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    kind = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    got = getattr(config, name)
    if got is None:
        assert "None" in kind
    elif kind.startswith("float"):
        assert isinstance(got, float) and math.isfinite(got)
    elif kind.startswith("int"):
        assert isinstance(got, int) and not isinstance(got, bool)
    elif kind.startswith("list"):
        assert all(isinstance(m, int) for m in got)
    assert config.seed < 2**32


NUMERIC_FIELDS = [f for f in dataclasses.fields(TrainConfig) if f.metadata["limits"] is not None]
numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), number_words,
                    st.integers(-3, 70_000).map(str), st.sampled_from([10**20, 1e20, 99999999999999999999, 4.5, 0,
                                                                       -1, 1, 2**32]))


def test_every_numeric_setting_has_a_documented_range():
    """The radius and the attack step have ranges that depend on the threat model and the objective, in their
    help; every other number has a Range, shown in --help and the docs' flag table."""
    helps = flag_help()
    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type)
        if kind.startswith(("int", "float", "list[int]")):
            assert f.metadata["limits"] is not None or f.name in ("eps", "step_size"), f.name
            assert "range " in helps[f.name], f.name


@checks
@given(st.sampled_from([f.name for f in NUMERIC_FIELDS]), numbers)
def test_every_numeric_setting_is_in_its_range_or_one_config_error(name, value):
    field = next(f for f in NUMERIC_FIELDS if f.name == name)
    try:
        config = TrainConfig(**{name: [value] if name == "milestones" else value})
    except ConfigError as err:
        assert "\n" not in str(err) and len(str(err)) < 400
        return
    got = getattr(config, name)
    assert all(field.metadata["limits"].contains(v) for v in (got if isinstance(got, list) else [got]))


NUMERIC_FLAGS = numeric_flags()


def test_every_numeric_flag_of_every_command_checks_a_documented_range():
    commands = {command for command, _ in NUMERIC_FLAGS}
    assert commands == {"quickstart", "eval", "export", *(f"bench {name}" for name in BENCHMARKS)}
    for command, action in NUMERIC_FLAGS:
        assert isinstance(action, InRange), (command, action.option_strings)
        assert f"range {action.limits}" in action.help


@checks
@given(st.sampled_from(NUMERIC_FLAGS), st.one_of(numbers.map(str), any_text))
def test_every_numeric_flag_is_a_number_in_its_range_or_one_config_error(flag, text):
    command, action = flag
    namespace = argparse.Namespace()
    try:
        action(None, namespace, [text] if action.nargs == "+" else text, action.option_strings[0])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(action.option_strings[0]), err
        return
    value = getattr(namespace, action.dest)
    for v in value if isinstance(value, list) else [value]:
        assert action.limits.contains(v) and (isinstance(v, int) if action.limits.integer else math.isfinite(v))


@checks
@given(any_text)
def test_trade_offs_are_floats_in_0_1_or_one_config_error(text):
    try:
        points = parse_tradeoffs(text)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert 0 < len(points) <= 1001 and all(isinstance(t, float) and 0 <= t <= 1 for t in points)


@checks
@given(st.sampled_from(list(EPS_RANGES)), any_text)
def test_radii_are_in_the_range_of_their_threat_model_or_one_config_error(norm, text):
    try:
        eps = Threat(norm, text).eps
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(("eps ", f"{norm} eps "))
        return
    assert EPS_RANGES[norm].contains(eps) and math.isfinite(eps)


@checks
@given(any_text)
def test_eps_lists_are_finite_floats_or_one_config_error(text):
    try:
        values = parse_number_list(text)
    except ConfigError:
        return
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)


dtypes = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int64,
                          torch.bool, torch.complex64])
special = st.sampled_from([0.0, 1.0, 0.5, -1e-6, 1.000001, float("nan"), float("inf"), -float("inf"), 255.0])


@st.composite
def tensors(draw, max_dims=5):
    shape = draw(st.lists(st.integers(0, 3), max_size=max_dims))
    x = torch.rand(shape, dtype=torch.float64)
    if x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(special)
    dtype = draw(dtypes)
    return x.to(dtype) if dtype.is_floating_point or dtype.is_complex else (x * 12 - 1).to(dtype)


@checks
@given(tensors(), tensors(max_dims=2), st.one_of(st.none(), st.integers(1, 12)))
def test_check_inputs_accepts_only_what_evaluate_can_take(x, y, num_classes):
    try:
        check_inputs(x, y, num_classes)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert x.is_floating_point() and x.dim() == 4 and x.numel() > 0 and len(y) == len(x) and y.dim() == 1
    assert 0 <= x.min().item() and x.max().item() <= 1 and not y.dtype.is_floating_point
    if num_classes is not None:
        assert 0 <= y.min().item() and y.max().item() < num_classes


@pytest.fixture(scope="module")
def gray_model():
    return create_model("resnet_small", width=4, in_channels=1, num_classes=3).eval()


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40))
def test_a_model_takes_images_with_its_channels_and_at_least_its_downsampling(gray_model, channels, height, width):
    """resnet_small has two stride-2 stages: a side of s pixels reaches the second one as ceil(s / 2) pixels,
    which must be at least 2, so sides of 3 pixels or more are taken."""
    x = torch.rand(2, channels, height, width)
    try:
        classes = check_model_inputs(gray_model, x, torch.device("cpu"))
    except ConfigError as err:
        assert channels != 1 or min(height, width) < 3, err
        return
    assert classes == 3 and channels == 1 and min(height, width) >= 3
