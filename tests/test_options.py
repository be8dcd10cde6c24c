"""Every option of every registered method is checked by the registry before the method is
built: the rules each class declares in ``options`` drive this matrix, so a new method (or
a new option) is covered the moment it is registered."""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import pytest
import torch

import camlens
from camlens._options import Choice, Count, Flag, Ranks, Real, Rule
from camlens._registry import create_method, method_class, register_method
from camlens.methods import Method

METHODS = camlens.available_methods()


def _defaults(name: str) -> dict[str, Any]:
    params = inspect.signature(method_class(name).__init__).parameters
    return {p: v.default for p, v in params.items() if p != "self" and v.default is not v.empty}


OPTIONS = [(name, option) for name in METHODS for option in method_class(name).options]


def wrong_types(rule: Rule) -> list[Any]:
    """Values of the wrong type for ``rule``: refused with a TypeError."""
    if isinstance(rule, Real):
        return ["0.5", True, [0.5], torch.tensor(0.5)] + ([] if rule.none else [None])
    if isinstance(rule, Count):
        return [1.5, float(rule.low + 1), True, "3", None]
    if isinstance(rule, Flag):
        return [1, 0, "yes", None]
    if isinstance(rule, Choice):
        return [1, None, [rule.choices[0]]]
    if isinstance(rule, Ranks):
        return [1, (1.5,), (True,), "123", [1, None]]
    raise AssertionError(f"no wrong-type values for the new rule {rule!r}: add them here")


def out_of_range(rule: Rule) -> list[Any]:
    """Values of the right type that ``rule`` refuses: a ValueError."""
    if isinstance(rule, Real):
        bad = [math.nan, math.inf, -math.inf]
        if rule.low is not None:
            bad.append(rule.low if rule.low_open else rule.low - 0.1)
        if rule.high is not None:
            bad.append(rule.high if rule.high_open else rule.high + 0.1)
        return bad
    if isinstance(rule, Count):
        return [rule.low - 1, -5]
    if isinstance(rule, Flag):
        return []  # True and False are both valid
    if isinstance(rule, Choice):
        return ["no-such-choice", rule.choices[0].upper() + "!"]
    if isinstance(rule, Ranks):
        return [(), (0,), (1, 1), (2, -1)]
    raise AssertionError(f"no out-of-range values for the new rule {rule!r}: add them here")


def edge_values(rule: Rule) -> list[Any]:
    """Valid values at the edges of ``rule``'s range (accepted)."""
    if isinstance(rule, Real):
        good: list[Any] = [] if rule.low is None or rule.low_open else [rule.low, int(rule.low)]
        if rule.high is not None and not rule.high_open:
            good.append(rule.high)
        return good + ([None] if rule.none else [])
    if isinstance(rule, Count):
        return [rule.low, rule.low + 1]
    if isinstance(rule, Flag):
        return [True, False]
    if isinstance(rule, Choice):
        return list(rule.choices)
    if isinstance(rule, Ranks):
        return [(1,), [2, 1]]
    raise AssertionError(f"no valid values for the new rule {rule!r}: add them here")


def test_every_method_option_has_a_rule():
    # register_method refuses a method without one rule per __init__ option; this pins it.
    for name in METHODS:
        cls = method_class(name)
        params = [
            p for p, prm in inspect.signature(cls.__init__).parameters.items()
            if p != "self" and prm.kind not in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD)
        ]
        assert sorted(params) == sorted(cls.options), name


@pytest.mark.parametrize(("method", "option"), OPTIONS)
def test_wrong_type_is_a_type_error(method, option):
    rule = method_class(method).options[option]
    start = rf"^{re.escape(method)} option {option} must be .*got "
    for value in wrong_types(rule):
        with pytest.raises(TypeError, match=start):
            create_method(method, **{option: value})


@pytest.mark.parametrize(("method", "option"), OPTIONS)
def test_out_of_range_is_a_value_error(method, option):
    rule = method_class(method).options[option]
    for value in out_of_range(rule):
        with pytest.raises(ValueError, match=rf"^{re.escape(method)} option {option} must be "):
            create_method(method, **{option: value})


@pytest.mark.parametrize(("method", "option"), OPTIONS)
def test_defaults_and_edges_are_accepted(method, option):
    rule = method_class(method).options[option]
    default = _defaults(method)[option]
    assert rule.problem(default) is None
    for value in [default, *edge_values(rule)]:
        assert isinstance(create_method(method, **{option: value}), Method)


@pytest.mark.parametrize("method", METHODS)
def test_all_defaults_at_once(method):
    assert isinstance(create_method(method, **_defaults(method)), method_class(method))


def test_messages_name_method_option_and_value():
    with pytest.raises(ValueError) as info:
        create_method("finercam", alpha=math.inf)
    assert str(info.value) == "finercam option alpha must be a finite number >= 0, got inf"
    with pytest.raises(TypeError) as info:
        create_method("finercam", alpha=True)
    assert str(info.value) == (
        "finercam option alpha must be a finite number >= 0, got True (bool)"
    )
    with pytest.raises(TypeError, match=r"comparison must be a non-empty tuple .* got \(1\.5,\)"):
        create_method("finercam", comparison=(1.5,))
    with pytest.raises(ValueError, match=r"rise option p must be a finite number in \(0, 1\]"):
        create_method("rise", p=0)
    with pytest.raises(ValueError, match="'sigmoid', 'rbf', 'linear', 'poly', 'cosine'"):
        create_method("kpcacam", kernel="gauss")
    with pytest.raises(TypeError, match="its options are: alpha, comparison, weighting"):
        create_method("finercam", gamma=0.6)


def test_explain_checks_before_running_anything(tiny, images):
    calls = []
    handle = tiny.register_forward_hook(lambda *_: calls.append(1))
    try:
        for options in ({"alpha": math.nan}, {"alpha": "0.6"}, {"comparison": (True,)}):
            with pytest.raises((TypeError, ValueError), match="finercam option"):
                camlens.explain(tiny, images, method="finercam", **options)
        with pytest.raises(ValueError, match="rise option p"):
            camlens.explain(tiny, images, method="rise", p=1.5)
        with pytest.raises(TypeError, match="rise option grid"):
            camlens.explain(tiny, images, method="rise", grid=4.0)
    finally:
        handle.remove()
    assert calls == []


def test_finercam_alpha_zero_is_gradcam_and_numpy_numbers_pass(tiny, images):
    # The smallest valid alpha: the score is y_c itself (mean weighting), i.e. Grad-CAM.
    grad = camlens.explain(tiny, images, method="gradcam", target=[1, 3])
    finer = camlens.explain(tiny, images, method="finercam", target=[1, 3], alpha=0,
                            weighting="mean")
    assert torch.allclose(finer, grad, atol=1e-6)
    # numpy scalars are real numbers and whole numbers too
    np = pytest.importorskip("numpy")
    same = camlens.explain(tiny, images, method="finercam", target=[1, 3],
                           alpha=np.float32(0.0), weighting="mean",
                           comparison=(np.int64(1), 2, 3))
    assert torch.equal(same, finer)


def test_registration_needs_a_rule_per_option_and_valid_defaults():
    class NoRule(Method):
        def __init__(self, strength: float = 1.0) -> None:
            self.strength = strength

    with pytest.raises(TypeError, match=r"NoRule\.options .* missing \['strength'\]"):
        register_method("test-no-rule")(NoRule)

    class BadDefault(Method):
        options = {"strength": Real(0)}

        def __init__(self, strength: float = -1.0) -> None:
            self.strength = strength

    with pytest.raises(ValueError, match="strength must be a finite number >= 0, got -1.0"):
        register_method("test-bad-default")(BadDefault)
    assert not camlens.available_methods("test-*")
