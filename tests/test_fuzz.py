"""Fuzzing ``jl.lstm`` against live PyTorch in float64.

Hypothesis draws a configuration (num_layers 1-3, bidirectional, proj_size, bias,
batch_first, the input form: padded, ``lengths=``, packed sorted / unsorted, unbatched
with or without a length; hx given or not), then the lengths (0 included), the weights,
the inputs, hx and the cotangents, and compares outputs, ``h_n``, ``c_n``, PyTorch's
packed view and the gradients w.r.t. every parameter, the input and hx with PyTorch at
1e-9 (``conftest.torch_reference``, which also stands in for the zero lengths PyTorch
refuses).

Compilation dominates the cost (a few seconds per configuration against milliseconds per
run), so shapes are fixed (``conftest``'s ``L``, ``N`` and sizes) and configurations are
drawn from :data:`POOL`: 24 configurations in which each of the 24 parameter structures
(num_layers x bidirectional x proj_size x bias) appears once, each of the 24 input set-ups
(form x batch_first x hx) appears once, and every pair of values of any two axes appears
together at least once. Each configuration compiles once (:func:`runner`); every other
example of it draws new lengths and values on the same executable.
"""

import functools
import itertools
import random

import jax
import numpy as np
import pytest
from conftest import (
    BATCH,
    FORMS,
    HIDDEN_SIZE,
    LENGTH_PATTERNS,
    PROJ_SIZE,
    SEQ_LEN,
    Case,
    assert_padding_grad_zero,
    assert_results_close,
    call_lstm,
    compiled_run,
    init_case_params,
    jax_result,
    random_inputs,
    torch_lstm,
    torch_reference,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jaxlstm as jl

TOL = 1e-9
PARAM_AXES = {
    "num_layers": (1, 2, 3),
    "bidirectional": (False, True),
    "proj_size": (0, PROJ_SIZE),
    "bias": (False, True),
}
INPUT_AXES = {"form": FORMS, "batch_first": (False, True), "hx": (False, True)}
AXES = PARAM_AXES | INPUT_AXES


def uncovered_pairs(rows):
    """The pairs of values of two axes that no row of ``rows`` holds together."""
    return {
        (a, va, b, vb)
        for a, b in itertools.combinations(AXES, 2)
        for va, vb in itertools.product(AXES[a], AXES[b])
        if not any(row[a] == va and row[b] == vb for row in rows)
    }


def covering_pool(seed=0):
    """Pairs each parameter structure with one input set-up (a bijection, both 24 long),
    shuffled (deterministically) until every pair of axis values is covered."""
    structures = [
        dict(zip(PARAM_AXES, v, strict=True)) for v in itertools.product(*PARAM_AXES.values())
    ]
    set_ups = [
        dict(zip(INPUT_AXES, v, strict=True)) for v in itertools.product(*INPUT_AXES.values())
    ]
    rng = random.Random(seed)
    while True:
        rng.shuffle(set_ups)
        rows = [s | u for s, u in zip(structures, set_ups, strict=True)]
        if not uncovered_pairs(rows):
            return tuple(Case(**row) for row in rows)


POOL = covering_pool()


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_pool_covers_every_pair_and_every_structure():
    rows = [{axis: getattr(case, axis) for axis in AXES} for case in POOL]
    assert not uncovered_pairs(rows)
    for axes in (PARAM_AXES, INPUT_AXES):
        combos = {tuple(row[a] for a in axes) for row in rows}
        assert combos == set(itertools.product(*axes.values()))


@functools.cache
def runner(case):
    """The compiled (primal, value-and-grad) jaxlstm function of ``case``: once each."""
    return compiled_run(case, functools.partial(call_lstm, batch_first=case.batch_first))


@functools.cache
def template(case):
    """Params of ``case`` (shapes and structure) to draw new values into."""
    return init_case_params(case, np.float64)


@st.composite
def examples(draw):
    """``(case, lengths, seed, input scale, weight scale)``."""
    case = draw(st.sampled_from(POOL))
    lengths = None
    if case.unbatched and case.has_lengths:
        lengths = np.int32(draw(st.integers(0, SEQ_LEN)))
    elif case.has_lengths:
        values = draw(st.lists(st.integers(0, SEQ_LEN), min_size=BATCH, max_size=BATCH))
        if case.form == "packed-sorted":
            values.sort(reverse=True)
        lengths = np.asarray(values, np.int32)
    seed = draw(st.integers(0, 2**32 - 1))
    input_scale = draw(st.sampled_from((1.0, 0.1, 3.0)))
    weight_scale = draw(st.sampled_from((1.0, 0.5, 2.0)))
    return case, lengths, seed, input_scale, weight_scale


def with_every_configuration(test):
    """One explicit example per configuration of :data:`POOL`, run before the drawn ones
    (hypothesis's own choice among the configurations is far from uniform)."""
    patterns = list(LENGTH_PATTERNS.values())
    for i, case in enumerate(POOL):
        lengths = None
        if case.unbatched and case.has_lengths:
            lengths = np.int32(i % (SEQ_LEN + 1))
        elif case.has_lengths:
            values = patterns[i % len(patterns)]
            if case.form == "packed-sorted":
                values = sorted(values, reverse=True)
            lengths = np.asarray(values, np.int32)
        test = example(drawn=(case, lengths, i, 1.0, 1.0))(test)
    return test


@pytest.mark.usefixtures("x64")
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@with_every_configuration
@given(drawn=examples())
def test_random_configurations_match_torch(drawn):
    case, lengths, seed, input_scale, weight_scale = drawn
    rng = np.random.default_rng(seed)
    bound = weight_scale / np.sqrt(HIDDEN_SIZE)
    params = jax.tree.map(lambda a: rng.uniform(-bound, bound, a.shape), template(case))
    x, hx, cotangents = random_inputs(case, np.float64, seed=seed)
    x = x * input_scale

    module = torch_lstm(jl.params_to_torch(params), batch_first=case.batch_first)
    expected = torch_reference(case, module, x, hx, lengths, cotangents)
    primal, (under_grad, grads) = runner(case)(params, x, hx, lengths, cotangents)
    where = f"{case.id} lengths={lengths}"
    actual = jax_result(under_grad, grads, grads[0])
    assert_results_close(actual, expected, TOL, f"{where} under grad")
    assert_results_close(jax_result(primal), expected, TOL, f"{where} primal", grads=False)
    assert_padding_grad_zero(case, actual.grads["input"], lengths)
