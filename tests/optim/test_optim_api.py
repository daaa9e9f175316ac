"""The optimizer registry, options handling and the package's promises."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError
from typing import Any

import numpy as np
import pytest

from regkit.errors import InputError, UnknownNameError, UserInputError
from regkit.optim import (
    CMAES,
    CMAESOptions,
    LocalOptions,
    NelderMead,
    Optimizer,
    ParamSpec,
    Powell,
    coerce_options,
    gradient_methods,
    minimize,
    optimizers,
)


def test_builtins_are_registered() -> None:
    assert optimizers.get("cmaes") is CMAES
    assert optimizers.get("powell") is Powell
    assert optimizers.get("nelder_mead") is NelderMead
    assert {"adam", "lbfgs"} <= set(gradient_methods.names())
    assert all(issubclass(optimizers.get(n), Optimizer) for n in optimizers.names())


def test_unknown_optimizer_lists_the_known_ones(ellipsoid: Any) -> None:
    with pytest.raises(UnknownNameError) as info:
        minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, method="cma-es")
    message = str(info.value)
    assert "unknown optimizer 'cma-es'" in message
    assert "did you mean 'cmaes'" in message
    assert "known: cmaes, nelder_mead, powell" in message
    assert isinstance(info.value, UserInputError)


@pytest.mark.parametrize(("method", "key", "suggestion"), [
    ("cmaes", "popsiz", "popsize"),
    ("cmaes", "sigma", None),
    ("powell", "max_evals", "max_evaluations"),
])
def test_unknown_option_key_is_named(ellipsoid: Any, method: str, key: str,
                                     suggestion: str | None) -> None:
    with pytest.raises(InputError) as info:
        minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, method, {key: 1})
    assert info.value.key == key
    message = str(info.value)
    assert f"'{key}'" in message
    assert f"unknown {method} option" in message
    if suggestion is not None:
        assert f"did you mean '{suggestion}'" in message


def test_options_of_another_method_are_refused(ellipsoid: Any) -> None:
    with pytest.raises(InputError, match="must be a CMAESOptions or a dict, got LocalOptions"):
        CMAES(np.zeros(6), ellipsoid.spec, LocalOptions())  # type: ignore[arg-type]


def test_options_are_frozen_typed_dataclasses() -> None:
    options = coerce_options(CMAESOptions, {"popsize": 12, "seed": 3}, "cmaes")
    assert options == CMAESOptions(popsize=12, seed=3)
    assert coerce_options(CMAESOptions, options, "cmaes") is options
    assert coerce_options(CMAESOptions, None, "cmaes") == CMAESOptions()
    with pytest.raises(FrozenInstanceError):
        options.popsize = 5  # type: ignore[misc]


def test_spec_must_be_a_paramspec() -> None:
    with pytest.raises(InputError, match="ParamSpec"):
        CMAES(np.zeros(2), ("x", "y"))  # type: ignore[arg-type]


def test_history_array_fields() -> None:
    spec = ParamSpec.unitless(2)
    result = minimize(lambda x: (x**2).sum(axis=1), np.ones(2), spec, "cmaes",
                      {"seed": 0, "max_iterations": 4})
    np.testing.assert_array_equal(result.history_array("count"), [6, 6, 6, 6])
    with pytest.raises(UnknownNameError, match="known: iteration, run, evaluations"):
        result.history_array("mean")


def test_import_loads_no_heavy_backend() -> None:
    code = ("import sys, regkit.optim; "
            "print(sorted(m for m in ('cma', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
