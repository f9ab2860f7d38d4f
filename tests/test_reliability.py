"""Reliability: what must hold however the library is fed.

* Garbage (NaN, +-inf, 1e30) past each sequence's length changes no output, state or
  gradient and makes no NaN, on every path that has padding: ``lengths=``, a
  ``PackedSequence`` made by ``pack_padded_sequence`` (garbage in its input) or built
  directly (garbage in its padded data), unbatched with a length; forward and reverse
  directions, several layers, a projection. Judged against live PyTorch, which never
  reads padding, and bit for bit against the same call on zero padding.
* Degenerate batches: an empty batch (``N = 0``) gives PyTorch's empty results; a packed
  batch whose every length is 0 gives zero rows and ``h_n, c_n = h_0, c_0``.
* Long and extreme: ``L = 100,000`` in float32 (forward, and the gradient with
  ``checkpoint_every``) is finite and matches PyTorch; inputs of scale 1e4 saturate the
  gates exactly as in PyTorch.
* Bounded-memory gradients: ``checkpoint_every=k`` equals the plain path for every kind
  of ``k`` (divides ``L``, leaves a remainder, ``k >= L``), and XLA's compiled memory
  analysis shows the temporary memory of the gradient shrink.
* Determinism: repeated runs, a different call order and a fresh compilation give the
  same bits, dropout included; the dropout mask is a function of the key alone.
* Validation sweep: bad arguments to every public entry point (beyond
  ``test_errors.py``) raise ``ValueError``/``TypeError`` naming the argument.
* Traced lengths out of range act as documented (above ``L``: ``L``; negative: 0),
  bidirectional and packed too, whatever their integer dtype; ``checkify`` reports them
  inside ``jl.checked_lengths()``, and only there.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import (
    BATCH,
    HIDDEN_SIZE,
    INPUT_SIZE,
    PROJ_SIZE,
    SEQ_LEN,
    Case,
    assert_close,
    assert_padding_grad_zero,
    assert_results_close,
    call_lstm,
    compiled_run,
    init_case_params,
    jax_result,
    loss_of,
    random_inputs,
    torch_lstm,
    torch_names,
    torch_reference,
)
from jax.experimental import checkify

import jaxlstm as jl
import jaxlstm.rnn as jrnn

BAD = (TypeError, ValueError)
TORCH_ERRORS = (RuntimeError, TypeError, ValueError)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def assert_trees_equal(actual, expected, where=""):
    leaves, want = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(leaves) == len(want), where
    for i, (a, e) in enumerate(zip(leaves, want, strict=True)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=f"{where} leaf {i}")


def assert_finite(tree, where):
    """No NaN nor inf in any floating leaf of ``tree``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating):
            bad = np.count_nonzero(~np.isfinite(a))
            assert bad == 0, f"{where}: {bad} non-finite values in {jax.tree_util.keystr(path)}"


def padded_mask(case, lengths):
    """``True`` at the input positions past each sequence's length: the input's shape
    without its feature axis."""
    steps = np.arange(SEQ_LEN)
    if case.unbatched:
        return steps >= lengths  # (L,)
    if case.batch_first:
        return steps[None, :] >= lengths[:, None]  # (N, L)
    return steps[:, None] >= lengths[None, :]  # (L, N)


# ======================================================================================
# 1. Garbage in padding

GARBAGE = {
    "nan": (np.nan,),
    "inf": (np.inf,),
    "-inf": (-np.inf,),
    "1e30": (1e30,),
    "mixed": (np.nan, np.inf, -1e30, -np.inf, 1e30),
}


def with_garbage(x, pad, kind):
    """``x`` with every padded position (``pad``) filled with the ``kind`` of garbage."""
    x = x.copy()
    x[pad] = np.resize(np.asarray(GARBAGE[kind], x.dtype), x[pad].shape)
    return x


def call_packed_directly(params, inp, hx, *, lengths, batch_first=False):
    """``jl.lstm`` on a ``PackedSequence`` built directly from padded data, so the garbage
    reaches the LSTM (``pack_padded_sequence`` would zero it first)."""
    assert not batch_first  # a PackedSequence is time-major
    packed = jl.PackedSequence(inp, lengths, enforce_sorted=False)
    out, state = jl.lstm(params, packed, hx)
    padded, _ = jl.pad_packed_sequence(out, total_length=inp.shape[0])
    return padded, state


CALLS = {"lstm": call_lstm, "packed-directly": call_packed_directly}


@functools.cache
def runner(case, call="lstm"):
    """One compiled (primal, value-and-grad) function per case, shared by every test here."""
    return compiled_run(case, functools.partial(CALLS[call], batch_first=case.batch_first))


GARBAGE_CASES = [  # every one bidirectional: the reverse direction starts inside the padding
    pytest.param(Case(2, True, PROJ_SIZE, True, False, "lengths", True), "lstm", id="lengths"),
    pytest.param(
        Case(3, True, 0, False, True, "packed-unsorted", False),
        "lstm",
        id="pack_padded_sequence-unsorted-batch_first",
    ),
    pytest.param(
        Case(1, True, PROJ_SIZE, True, False, "packed-sorted", True),
        "lstm",
        id="pack_padded_sequence-sorted",
    ),
    pytest.param(
        Case(2, True, PROJ_SIZE, False, False, "lengths", True),
        "packed-directly",
        id="PackedSequence-padded-data",
    ),
    pytest.param(
        Case(2, True, 0, True, False, "unbatched-lengths", True), "lstm", id="unbatched-length"
    ),
]
LENGTHS_CASE, UNSORTED_CASE, SORTED_CASE, DIRECT_CASE, _ = (p.values[0] for p in GARBAGE_CASES)


def run_case(case, call, x, hx, lengths, cotangents, params):
    """``(primal, under_grad, grads)`` of jaxlstm, float64."""
    primal, (under_grad, grads) = runner(case, call)(params, x, hx, lengths, cotangents)
    return primal, under_grad, grads


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("kind", GARBAGE)
@pytest.mark.parametrize("case, call", GARBAGE_CASES)
def test_garbage_in_padding_changes_nothing(case, call, kind):
    params = init_case_params(case, np.float64)
    module = torch_lstm(jl.params_to_torch(params), batch_first=case.batch_first)
    x, hx, cotangents = random_inputs(case, np.float64)
    for name, lengths in case.length_patterns().items():
        where = f"[lengths {name}, {kind} padding]"
        pad = padded_mask(case, lengths)
        dirty = with_garbage(x, pad, kind)
        primal, under_grad, grads = run_case(case, call, dirty, hx, lengths, cotangents, params)
        assert_finite((primal, under_grad, grads), where)

        expected = torch_reference(case, module, dirty, hx, lengths, cotangents)
        actual = jax_result(under_grad, grads, grads[0])
        assert_results_close(actual, expected, 1e-9, f"{where} under grad")
        assert_results_close(jax_result(primal), expected, 1e-9, f"{where} primal", grads=False)
        assert_padding_grad_zero(case, actual.grads["input"], lengths)

        # Bit for bit what zero padding gives.
        clean = np.where(pad[..., None], 0.0, x)
        reference = run_case(case, call, clean, hx, lengths, cotangents, params)
        assert_trees_equal((primal, under_grad, grads), reference, where)


# ======================================================================================
# 2. Degenerate batches


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_empty_batch_gives_torch_shapes(batch_first, with_lengths):
    """``N = 0``: PyTorch returns empty results (it refuses only ``L = 0``)."""
    case = Case(2, True, PROJ_SIZE, True, batch_first, "padded", True)
    params = init_case_params(case, np.float64)
    module = torch_lstm(jl.params_to_torch(params), batch_first=batch_first)
    x = np.zeros((0, SEQ_LEN, INPUT_SIZE) if batch_first else (SEQ_LEN, 0, INPUT_SIZE))
    hx = (np.zeros((4, 0, PROJ_SIZE)), np.zeros((4, 0, HIDDEN_SIZE)))
    want_out, (want_h, want_c) = module(torch.from_numpy(x), tuple(map(torch.from_numpy, hx)))
    kwargs = {"lengths": np.zeros(0, np.int32)} if with_lengths else {}
    out, (h_n, c_n) = jl.lstm(params, x, hx, batch_first=batch_first, **kwargs)
    for got, want in ((out, want_out), (h_n, want_h), (c_n, want_c)):
        assert got.shape == tuple(want.shape)
        assert got.dtype == np.float64


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: jl.pack_padded_sequence(x, [0] * BATCH), id="pack_padded_sequence"),
        pytest.param(
            lambda x: jl.pack_sequence([x[:0, i] for i in range(BATCH)], enforce_sorted=False),
            id="pack_sequence",
        ),
    ],
)
@pytest.mark.parametrize("facade", [False, True], ids=["lstm", "LSTM"])
def test_packed_batch_of_empty_sequences(make, facade):
    """Every length 0 (allowed by the contract): no rows out, ``h_n, c_n = h_0, c_0``."""
    case = DIRECT_CASE
    params = init_case_params(case, np.float64)
    x, hx, _ = random_inputs(case, np.float64)
    packed = make(x)
    if facade:
        module = jl.LSTM(
            INPUT_SIZE,
            HIDDEN_SIZE,
            case.num_layers,
            bias=case.bias,
            bidirectional=case.bidirectional,
            proj_size=case.proj_size,
            dtype=jnp.float64,
            key=jax.random.key(0),
        )
        module.params = params
        out, (h_n, c_n) = module(packed, hx)
    else:
        out, (h_n, c_n) = jl.lstm(params, packed, hx)
    assert isinstance(out, jl.PackedSequence)
    assert out.data.shape == (0, 2 * PROJ_SIZE)
    assert out.batch_sizes.shape == (0,)
    padded, lengths = jl.pad_packed_sequence(out, total_length=SEQ_LEN)
    np.testing.assert_array_equal(padded, np.zeros((SEQ_LEN, BATCH, 2 * PROJ_SIZE)))
    np.testing.assert_array_equal(lengths, 0)
    np.testing.assert_array_equal(h_n, hx[0])
    np.testing.assert_array_equal(c_n, hx[1])


# ======================================================================================
# 3. Long sequences and extreme inputs

LONG_LEN, LONG_BATCH, LONG_HIDDEN, LONG_INPUT, LONG_EVERY = 100_000, 2, 8, 4, 1000


def test_long_sequence_float32_is_finite_and_matches_torch():
    """``L = 100,000``, inputs of scale 3, float32: the forward results and the gradient
    (``checkpoint_every=1000``) are finite and agree with PyTorch."""
    params = jl.init_params(jax.random.key(0), LONG_INPUT, LONG_HIDDEN)
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((LONG_LEN, LONG_BATCH, LONG_INPUT))).astype(np.float32)

    def loss(params, x):
        out, (h_n, c_n) = jl.lstm(params, x, checkpoint_every=LONG_EVERY)
        return out.sum() + h_n.sum() + c_n.sum(), (out, h_n, c_n)

    (_, results), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    assert_finite((results, grads), "L = 100,000")

    module = torch_lstm(jl.params_to_torch(params))
    tx = torch.tensor(x, requires_grad=True)
    out, (h_n, c_n) = module(tx)
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    for name, got, want in zip(("output", "h_n", "c_n"), results, (out, h_n, c_n), strict=True):
        assert_close(got, want.detach().numpy(), 1e-4, name)
    assert_close(grads[1], tx.grad.numpy(), 1e-4, "d/d input")
    d_params = dict(torch_names(grads[0]))
    for name, want in module.named_parameters():
        assert_close(d_params[name], want.grad.numpy(), 1e-4, f"d/d {name}")


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-9)])
def test_extreme_inputs_saturate_like_torch(dtype, tol, request):
    """Inputs of scale 1e4 drive every gate into saturation: same numbers as PyTorch
    (outputs, states, gradients), nothing infinite, nothing NaN."""
    if dtype == np.float64:
        request.getfixturevalue("x64")
    case = LENGTHS_CASE
    params = init_case_params(case, dtype)
    module = torch_lstm(jl.params_to_torch(params))
    x, hx, cotangents = random_inputs(case, dtype)
    x = x * dtype(1e4)
    for name, lengths in case.length_patterns().items():
        where = f"[lengths {name}]"
        primal, under_grad, grads = run_case(case, "lstm", x, hx, lengths, cotangents, params)
        assert_finite((primal, under_grad, grads), where)
        expected = torch_reference(case, module, x, hx, lengths, cotangents)
        assert_results_close(jax_result(under_grad, grads, grads[0]), expected, tol, where)
        assert_results_close(jax_result(primal), expected, tol, where, grads=False)


# ======================================================================================
# 4. Bounded-memory gradients

CKPT_LEN = 12
CKPT_LENGTHS = {
    "mixed": np.array([12, 7, 0, 3], np.int32),
    "ties": np.array([5, 12, 12, 1], np.int32),
    "full": np.full(BATCH, CKPT_LEN, np.int32),
}
CKPT_EVERY = [
    pytest.param(1, id="k=1"),
    pytest.param(4, id="k=4-divides-L"),
    pytest.param(5, id="k=5-remainder"),
    pytest.param(CKPT_LEN, id="k=L"),
    pytest.param(CKPT_LEN + 1, id="k>L"),
]


def checkpoint_inputs():
    """params (2 layers, bidirectional, projection), ``x (L, N, H_in)``, hx, cotangents."""
    case = Case(2, True, PROJ_SIZE, True, False, "lengths", True)
    params = init_case_params(case, np.float64)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((CKPT_LEN, BATCH, INPUT_SIZE))
    hx = (rng.standard_normal((4, BATCH, PROJ_SIZE)), rng.standard_normal((4, BATCH, HIDDEN_SIZE)))
    cotangents = (
        rng.standard_normal((CKPT_LEN, BATCH, 2 * PROJ_SIZE)),
        rng.standard_normal(hx[0].shape),
        rng.standard_normal(hx[1].shape),
    )
    return params, x, hx, cotangents


@functools.cache
def checkpoint_runner(every):
    def loss(params, x, hx, lengths, cotangents):
        out, (h_n, c_n) = jl.lstm(params, x, hx, lengths=lengths, checkpoint_every=every)
        return loss_of(out, h_n, c_n, cotangents), (out, h_n, c_n)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def with_nan_padding(x, lengths):
    return np.where((np.arange(len(x))[:, None] >= lengths[None, :])[..., None], np.nan, x)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("every", CKPT_EVERY)
def test_checkpoint_every_equals_plain_path(every):
    """Outputs, states and every gradient equal the plain path's (float64, lengths with 0
    and L, bidirectional, two layers, projection, NaN padding)."""
    params, x, hx, cotangents = checkpoint_inputs()
    for name, lengths in CKPT_LENGTHS.items():
        inp = with_nan_padding(x, lengths)
        plain = checkpoint_runner(None)(params, inp, hx, lengths, cotangents)
        chunked = checkpoint_runner(every)(params, inp, hx, lengths, cotangents)
        assert_finite(chunked, f"[lengths {name}]")
        for i, (got, want) in enumerate(
            zip(jax.tree.leaves(chunked), jax.tree.leaves(plain), strict=True)
        ):
            assert_close(got, want, 1e-12, f"[lengths {name}] leaf {i}")


@pytest.mark.usefixtures("x64")
def test_module_checkpoint_every_equals_plain_path():
    """``jl.LSTM(...)(x, checkpoint_every=k)``, gradients taken over the module."""
    params, x, hx, cotangents = checkpoint_inputs()
    module = jl.LSTM(
        INPUT_SIZE,
        HIDDEN_SIZE,
        2,
        bidirectional=True,
        proj_size=PROJ_SIZE,
        dtype=jnp.float64,
        key=jax.random.key(0),
    )
    module.params = params

    def loss(module, x, hx, lengths, cotangents):
        out, (h_n, c_n) = module(x, hx, lengths=lengths, checkpoint_every=5)
        return loss_of(out, h_n, c_n, cotangents), (out, h_n, c_n)

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    for name, lengths in CKPT_LENGTHS.items():
        inp = with_nan_padding(x, lengths)
        (value, aux), (d_module, d_x, d_hx) = run(module, inp, hx, lengths, cotangents)
        assert isinstance(d_module, jl.LSTM)
        got = (value, aux), (d_module.params, d_x, d_hx)
        plain = checkpoint_runner(None)(params, inp, hx, lengths, cotangents)
        for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True)):
            assert_close(a, b, 1e-12, f"[lengths {name}] leaf {i}")


def gradient_temp_bytes(every):
    """XLA's temporary memory for the gradient at L = 20,000, N = 8, H = 256, H_in = 32
    (compiled, not run)."""
    params = jl.init_params(jax.random.key(0), 32, 256)
    x = jax.ShapeDtypeStruct((20_000, 8, 32), jnp.float32)

    def loss(params, x):
        out, (h_n, c_n) = jl.lstm(params, x, checkpoint_every=every)
        return out.sum() + h_n.sum() + c_n.sum()

    compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_checkpoint_every_shrinks_gradient_memory():
    plain, chunked = gradient_temp_bytes(None), gradient_temp_bytes(100)
    mib = 2**20
    assert plain >= 4 * chunked, (
        f"temporary memory of the gradient: {plain / mib:.1f} MiB plain, "
        f"{chunked / mib:.1f} MiB with checkpoint_every=100"
    )


# ======================================================================================
# 5. Determinism

DROPOUT_CASE = Case(2, True, PROJ_SIZE, True, False, "lengths", True)
DROPOUT_LENGTHS = np.array([3, 5, 0, 1], np.int32)


def dropout_loss(params, x, hx, key, cotangents):
    out, (h_n, c_n) = jl.lstm(params, x, hx, lengths=DROPOUT_LENGTHS, dropout=0.5, key=key)
    return loss_of(out, h_n, c_n, cotangents), (out, h_n, c_n)


def dropout_run():
    """A freshly compiled forward-and-gradient with dropout."""
    return jax.jit(jax.value_and_grad(dropout_loss, argnums=(0, 1, 2), has_aux=True))


def test_runs_are_bitwise_reproducible_and_masks_depend_on_the_key_alone():
    params = init_case_params(DROPOUT_CASE)
    x, hx, cotangents = random_inputs(DROPOUT_CASE, np.float32)
    other_x = x[::-1].copy()
    key_a, key_b = jax.random.key(11), jax.random.key(12)

    run = dropout_run()
    first_a = run(params, x, hx, key_a, cotangents)
    first_b = run(params, x, hx, key_b, cotangents)
    run(params, other_x, hx, key_b, cotangents)  # other inputs in between
    assert_trees_equal(run(params, x, hx, key_a, cotangents), first_a, "repeat, key a")
    assert_trees_equal(run(params, x, hx, key_b, cotangents), first_b, "repeat, key b")
    assert not np.allclose(first_a[0][1][0], first_b[0][1][0]), "the key must change the mask"

    # A fresh compilation, called in the opposite order, gives the same bits.
    fresh = dropout_run()
    assert_trees_equal(fresh(params, x, hx, key_b, cotangents), first_b, "fresh, key b")
    assert_trees_equal(fresh(params, x, hx, key_a, cotangents), first_a, "fresh, key a")
    assert_finite((first_a, first_b), "dropout")


@pytest.mark.usefixtures("x64")
def test_without_dropout_runs_are_bitwise_reproducible():
    """The plain float64 path, forward and gradients: every length pattern, then all again
    in the opposite order."""
    case = LENGTHS_CASE
    params = init_case_params(case, np.float64)
    x, hx, cotangents = random_inputs(case, np.float64)
    patterns = list(case.length_patterns().values())
    first = [run_case(case, "lstm", x, hx, p, cotangents, params) for p in patterns]
    again = [run_case(case, "lstm", x, hx, p, cotangents, params) for p in patterns[::-1]]
    assert_trees_equal(first, again[::-1], "second pass")


# ======================================================================================
# 6. Validation sweep (cases not in test_errors.py)


@functools.cache
def params():
    """One layer, H_in = 3, H = 4, float32."""
    return jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE)


@functools.cache
def params2():
    """Two layers: dropout acts."""
    return jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, 2)


@functools.cache
def cell_params():
    return jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE)


def x(*shape, dtype=np.float32):
    """An input of ``shape`` (default ``(L, N, H_in)``)."""
    return np.ones(shape or (SEQ_LEN, BATCH, INPUT_SIZE), dtype)


def state(slots=1, batch=BATCH, dtype=np.float32):
    """``(h_0, c_0)`` zeros for ``params()``."""
    return (np.zeros((slots, batch, HIDDEN_SIZE), dtype),) * 2


def lstm(inp, hx=None, **kwargs):
    return jl.lstm(params(), inp, hx, **kwargs)


def module(**kwargs):
    return jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, **{"key": jax.random.key(0), **kwargs})


def cell_x():
    return x(BATCH, INPUT_SIZE)


def cell_state(batch=BATCH, dtype=np.float32):
    return np.zeros((batch, HIDDEN_SIZE), dtype), np.zeros((batch, HIDDEN_SIZE), dtype)


def layer(**changes):
    """``params()`` with fields of its one ``LayerParams`` replaced."""
    return ((params()[0][0]._replace(**changes),),)


def t(a):
    return torch.from_numpy(np.asarray(a))


def torch_module():
    return torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE)


def case(id, call, match, torch_call=None, error=BAD):
    return pytest.param(call, error, match, torch_call, id=id)


EMPTY_SEQUENCE = r"Expected sequence length to be larger than 0"
# Names the key, and is not JAX's complaint about a non-array argument of a private jitted
# function (which names only a "path key" and advises static_argnums).
KEY_WORDS = r"(?s)^(?!Error interpreting argument).*\bkey\b"
DROPOUT_WORDS = r"dropout should be a number in range \[0, 1\]"
LENGTHS_LIKE = np.array([5, 3, 2, 1])

LSTM_CASES = [
    # -- L = 0. PyTorch refuses an empty sequence (a length-0 *sequence* in a batch is the
    # contract's own extension, see test_packed_batch_of_empty_sequences).
    case(
        "L=0",
        lambda: lstm(x(0, BATCH, INPUT_SIZE)),
        EMPTY_SEQUENCE,
        lambda: torch_module()(t(x(0, BATCH, INPUT_SIZE))),
    ),
    case(
        "L=0-unbatched",
        lambda: lstm(x(0, INPUT_SIZE)),
        EMPTY_SEQUENCE,
        lambda: torch_module()(t(x(0, INPUT_SIZE))),
    ),
    case(
        "L=0-batch_first",
        lambda: lstm(x(BATCH, 0, INPUT_SIZE), batch_first=True),
        EMPTY_SEQUENCE,
    ),
    case(
        "L=0-lengths",
        lambda: lstm(x(0, BATCH, INPUT_SIZE), lengths=np.zeros(BATCH, np.int32)),
        EMPTY_SEQUENCE,
    ),
    # -- lengths
    case("lengths-rank-2-column", lambda: lstm(x(), lengths=LENGTHS_LIKE[:, None]), r"lengths"),
    case(
        "lengths-fractional-unbatched",
        lambda: lstm(x(SEQ_LEN, INPUT_SIZE), lengths=2.5),
        r"lengths.*2\.5",
    ),
    case(
        "lengths-bfloat16",
        lambda: lstm(x(), lengths=jnp.asarray(LENGTHS_LIKE, jnp.bfloat16)),
        r"lengths.*bfloat16",
    ),
    case(
        "lengths-float16",
        lambda: lstm(x(), lengths=jnp.asarray(LENGTHS_LIKE, jnp.float16)),
        r"lengths.*float16",
    ),
    case("lengths-bool", lambda: lstm(x(), lengths=LENGTHS_LIKE > 2), r"lengths.*bool"),
    case("lengths-string", lambda: lstm(x(), lengths="5321"), r"lengths"),
    case("lengths-None-entries", lambda: lstm(x(), lengths=[5, None, 2, 1]), r"lengths"),
    case(
        "lengths-float-traced",
        lambda: jax.jit(lambda v: lstm(x(), lengths=v))(LENGTHS_LIKE.astype(np.float32)),
        r"lengths.*float32",
    ),
    case(
        "lengths-with-PackedSequence-built-without",
        lambda: lstm(jl.PackedSequence(x(), None)),
        r"lengths",
    ),
    # -- hx
    case(
        "hx1-batch",
        lambda: lstm(x(), (state()[0], state(batch=BATCH + 1)[1])),
        r"Expected hidden\[1\] size \(1, 4, 4\), got \[1, 5, 4\]",
        lambda: torch_module()(t(x()), (t(state()[0]), t(state(batch=BATCH + 1)[1]))),
    ),
    case(
        "hx-batch-packed",
        lambda: lstm(jl.pack_padded_sequence(x(), LENGTHS_LIKE), state(batch=BATCH - 1)),
        r"Expected hidden\[0\] size \(1, 4, 4\), got \[1, 3, 4\]",
    ),
    case("hx-one-element", lambda: lstm(x(), state()[:1]), r"hx"),
    case("hx-three-elements", lambda: lstm(x(), (*state(), state()[0])), r"hx"),
    case("hx-dict", lambda: lstm(x(), dict(zip("hc", state(), strict=True))), r"hx"),
    case("hx-None-entries", lambda: lstm(x(), (None, None)), r"hx\[0\]"),
    case("hx1-integer", lambda: lstm(x(), (state()[0], state(dtype=np.int32)[1])), r"hx\[1\]"),
    case("hx-bool", lambda: lstm(x(), state(dtype=bool)), r"hx\[0\].*bool"),
    # -- input
    case("input-string", lambda: lstm("not an array"), r"\binput\b"),
    case("input-None", lambda: lstm(None), r"\binput\b"),
    case("input-bool", lambda: lstm(x(dtype=bool)), r"\binput\b.*bool"),
    case("input-complex", lambda: lstm(x(dtype=np.complex64)), r"\binput\b.*complex64"),
    # -- params
    case("params-None", lambda: jl.lstm(None, x()), r"params"),
    case("params-w_ih-None", lambda: jl.lstm(layer(w_ih=None), x()), r"w_ih|weight_ih"),
    case("params-w_hh-None", lambda: jl.lstm(layer(w_hh=None), x()), r"w_hh|weight_hh"),
    case(
        "params-lists",
        lambda: jl.lstm(layer(w_ih=np.asarray(params()[0][0].w_ih).tolist()), x()),
        r"params|w_ih",
    ),
    case(
        "params-integer",
        lambda: jl.lstm(jax.tree.map(lambda a: a.astype(jnp.int32), params()), x()),
        r"params.*int32|int32.*params",
    ),
    # -- options
    case("key-string", lambda: jl.lstm(params2(), x(), dropout=0.5, key="key"), KEY_WORDS),
    case("key-int", lambda: jl.lstm(params2(), x(), dropout=0.5, key=3), KEY_WORDS),
    case("key-string-unused", lambda: lstm(x(), key="key"), KEY_WORDS),
    case("key-int-unused", lambda: lstm(x(), key=3), KEY_WORDS),
    case("dropout-True", lambda: jl.lstm(params2(), x(), dropout=True), DROPOUT_WORDS),
    case("dropout-string", lambda: jl.lstm(params2(), x(), dropout="0.5"), DROPOUT_WORDS),
    case("dropout-nan", lambda: jl.lstm(params2(), x(), dropout=float("nan")), DROPOUT_WORDS),
    case("checkpoint_every-0", lambda: lstm(x(), checkpoint_every=0), r"checkpoint_every"),
    case("checkpoint_every-float", lambda: lstm(x(), checkpoint_every=2.0), r"checkpoint_every"),
    case("checkpoint_every-bool", lambda: lstm(x(), checkpoint_every=True), r"checkpoint_every"),
    case(
        "checkpoint_every-traced",
        lambda: jax.jit(lambda k: lstm(x(), checkpoint_every=k))(2),
        r"checkpoint_every",
    ),
    case("matmul_dtype-int", lambda: lstm(x(), matmul_dtype=jnp.int32), r"matmul_dtype"),
]

MODULE_CASES = [
    case("num_layers-float", lambda: module(num_layers=2.0), r"num_layers"),
    case("num_layers-bool", lambda: module(num_layers=True), r"num_layers"),
    case("proj_size-float", lambda: module(proj_size=1.0), r"proj_size"),
    case(
        "input_size-numpy-float",
        lambda: jl.LSTM(np.float64(3.0), 4, key=jax.random.key(0)),
        r"input_size",
    ),
    case(
        "dropout-True",
        lambda: module(num_layers=2, dropout=True),
        DROPOUT_WORDS,
        lambda: torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, 2, dropout=True),
    ),
    case(
        "dropout-string",
        lambda: module(num_layers=2, dropout="0.5"),
        DROPOUT_WORDS,
        lambda: torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, 2, dropout="0.5"),
    ),
    case("key-string", lambda: module(key="key"), KEY_WORDS),
    case("key-missing", lambda: jl.LSTM(INPUT_SIZE, HIDDEN_SIZE), r"needs a key.*jl\.LSTM\("),
    case("key-None", lambda: module(key=None), r"needs a key.*key=jax\.random\.key\(0\)"),
    case("dtype-integer", lambda: module(dtype=jnp.int32), r"dtype"),
    case("dtype-junk", lambda: module(dtype="junk"), r"dtype|data type"),
    case("matmul_dtype-int", lambda: module(matmul_dtype=jnp.int32), r"matmul_dtype"),
    case("call-L=0", lambda: module()(x(0, BATCH, INPUT_SIZE)), EMPTY_SEQUENCE),
    case("call-input-string", lambda: module()("not an array"), r"\binput\b"),
    case("call-input-None", lambda: module()(None), r"\binput\b"),
    case("call-hx-single-array", lambda: module()(x(), state()[0]), r"hx"),
    case("call-hx-one-element", lambda: module()(x(), state()[:1]), r"hx"),
    case(
        "call-lengths-fractional", lambda: module()(x(), lengths=[5, 2.5, 1, 0]), r"lengths.*2\.5"
    ),
    case("call-lengths-rank-2", lambda: module()(x(), lengths=LENGTHS_LIKE[:, None]), r"lengths"),
    case("call-key-string", lambda: module(num_layers=2, dropout=0.5)(x(), key="k"), KEY_WORDS),
    case("call-checkpoint_every-0", lambda: module()(x(), checkpoint_every=0), r"checkpoint_every"),
    case(
        "load_state_dict-None",
        lambda: module().load_state_dict(None),
        r"Expected state_dict to be dict-like",
        lambda: torch_module().load_state_dict(None),
    ),
    case(
        "load_state_dict-list",
        lambda: module().load_state_dict(list(module().state_dict().items())),
        r"state_dict",
    ),
    case(
        "load_state_dict-value-None",
        lambda: module().load_state_dict({**module().state_dict(), "bias_hh_l0": None}),
        r"bias_hh_l0",
    ),
    case(
        "load_state_dict-integer",
        lambda: module().load_state_dict(
            {k: v.astype(np.int32) for k, v in module().state_dict().items()}
        ),
        r"weight_ih_l0|int32",
    ),
]

CELL_CASES = [
    case(
        "init-num_layers-float", lambda: jl.init_params(jax.random.key(0), 3, 4, 2.0), r"num_layers"
    ),
    case("init-key-None", lambda: jl.init_params(None, 3, 4), KEY_WORDS),
    case("init-key-string", lambda: jl.init_params("key", 3, 4), KEY_WORDS),
    case(
        "init-dtype-integer",
        lambda: jl.init_params(jax.random.key(0), 3, 4, dtype=jnp.int32),
        r"dtype",
    ),
    case(
        "init-dtype-junk",
        lambda: jl.init_params(jax.random.key(0), 3, 4, dtype="junk"),
        r"dtype|data type",
    ),
    case("init_cell-key-None", lambda: jl.init_cell_params(None, 3, 4), KEY_WORDS),
    case(
        "init_cell-input_size-float",
        lambda: jl.init_cell_params(jax.random.key(0), 3.0, 4),
        r"input_size",
    ),
    case(
        "LSTMCell-input_size-float",
        lambda: jl.LSTMCell(3.0, 4, key=jax.random.key(0)),
        r"input_size",
    ),
    case("LSTMCell-key-int", lambda: jl.LSTMCell(3, 4, key=3), KEY_WORDS),
    case("LSTMCell-key-missing", lambda: jl.LSTMCell(3, 4), r"needs a key.*jl\.LSTMCell\("),
    case("cell-params-None", lambda: jl.lstm_cell(None, cell_x()), r"params"),
    case("cell-input-None", lambda: jl.lstm_cell(cell_params(), None), r"\binput\b"),
    case(
        "cell-input-string",
        lambda: jl.LSTMCell(3, 4, key=jax.random.key(0))("not an array"),
        r"\binput\b",
    ),
    case(
        "cell-hx-single-array",
        lambda: jl.lstm_cell(cell_params(), cell_x(), cell_state()[0]),
        r"hx",
        lambda: torch.nn.LSTMCell(3, 4)(t(cell_x()), t(cell_state()[0])),
    ),
    case(
        "cell-hx-one-element",
        lambda: jl.LSTMCell(3, 4, key=jax.random.key(0))(cell_x(), cell_state()[:1]),
        r"hx",
    ),
    case(
        "cell-hidden1-batch",
        lambda: jl.lstm_cell(cell_params(), cell_x(), (cell_state()[0], cell_state(5)[1])),
        r"Input batch size 4 doesn't match hidden1 batch size 5",
        lambda: torch.nn.LSTMCell(3, 4)(t(cell_x()), (t(cell_state()[0]), t(cell_state(5)[1]))),
    ),
    case(
        "cell-hx-integer",
        lambda: jl.lstm_cell(cell_params(), cell_x(), cell_state(dtype=np.int32)),
        r"hx\[0\].*int32",
    ),
    case(
        "cell-params-w_hh-shape",
        lambda: jl.lstm_cell(cell_params()._replace(w_hh=jnp.ones((16, 5))), cell_x()),
        r"w_hh|weight_hh",
    ),
    case(
        "cell-params-w_ih-1d",
        lambda: jl.lstm_cell(cell_params()._replace(w_ih=jnp.ones(16)), cell_x()),
        r"w_ih|weight_ih",
    ),
    case(
        "cell-params-b_ih-shape",
        lambda: jl.lstm_cell(cell_params()._replace(b_ih=jnp.ones(5)), cell_x()),
        r"b_ih|bias_ih",
    ),
    case(
        "cell-params-b_ih-None-b_hh-given",
        lambda: jl.lstm_cell(cell_params()._replace(b_ih=None), cell_x()),
        r"b_ih|b_hh|bias",
    ),
    case(
        "cell-params-integer",
        lambda: jl.lstm_cell(jax.tree.map(lambda a: a.astype(jnp.int32), cell_params()), cell_x()),
        r"params.*int32|int32.*params",
    ),
    case(
        "cell-load_state_dict-None",
        lambda: jl.LSTMCell(3, 4, key=jax.random.key(0)).load_state_dict(None),
        r"Expected state_dict to be dict-like",
        lambda: torch.nn.LSTMCell(3, 4).load_state_dict(None),
    ),
]

CONVERSION_CASES = [
    case("to_torch-None", lambda: jl.params_to_torch(None), r"params"),
    case("to_torch-one-LayerParams", lambda: jl.params_to_torch(params()[0][0]), r"params"),
    case(
        "to_torch-cell-w_hh-shape",
        lambda: jl.params_to_torch(cell_params()._replace(w_hh=jnp.ones((16, 5)))),
        r"w_hh|weight_hh",
    ),
    case(
        "to_torch-cell-w_ih-None",
        lambda: jl.params_to_torch(cell_params()._replace(w_ih=None)),
        r"w_ih|weight_ih",
    ),
    case("from_torch-None", lambda: jl.params_from_torch(None), r"state_dict"),
    case("from_torch-empty", lambda: jl.params_from_torch({}), r"weight_ih"),
    case(
        "from_torch-value-string",
        lambda: jl.params_from_torch({**jl.params_to_torch(params()), "bias_ih_l0": "junk"}),
        r"bias_ih_l0",
    ),
    case(
        "from_torch-non-string-key",
        lambda: jl.params_from_torch({**jl.params_to_torch(params()), 0: np.ones(3)}),
        r"state_dict|\b0\b",
    ),
    case(
        "from_torch-cell-value-None",
        lambda: jl.params_from_torch({**jl.params_to_torch(cell_params()), "bias_hh": None}),
        r"bias_hh",
    ),
]

RNN_CASES = [
    case(
        "pack_padded-input-None",
        lambda: jrnn.pack_padded_sequence(None, [1]),
        r"\binput\b",
        lambda: torch.nn.utils.rnn.pack_padded_sequence(None, [1]),
    ),
    case("pack_padded-input-string", lambda: jrnn.pack_padded_sequence("abc", [1]), r"\binput\b"),
    case(
        "pack_padded-lengths-fractional",
        lambda: jrnn.pack_padded_sequence(x(), [5, 2.5, 1, 0]),
        r"lengths.*2\.5",
    ),
    case(
        "pack_padded-lengths-rank-2",
        lambda: jrnn.pack_padded_sequence(x(), LENGTHS_LIKE[:, None]),
        r"lengths",
        lambda: torch.nn.utils.rnn.pack_padded_sequence(t(x()), t(LENGTHS_LIKE[:, None])),
    ),
    case(
        "pack_padded-lengths-bfloat16",
        lambda: jrnn.pack_padded_sequence(x(), jnp.asarray(LENGTHS_LIKE, jnp.bfloat16)),
        r"lengths.*bfloat16",
    ),
    case("pack_padded-lengths-None", lambda: jrnn.pack_padded_sequence(x(), None), r"lengths"),
    case("pack_sequence-empty-list", lambda: jrnn.pack_sequence([]), r"sequences"),
    case("pack_sequence-None-entry", lambda: jrnn.pack_sequence([None]), r"sequences"),
    case("pack_sequence-string-entry", lambda: jrnn.pack_sequence(["abc"]), r"sequences"),
    case(
        "pack_sequence-trailing-shapes",
        lambda: jrnn.pack_sequence([x(3, 2), x(2, 3)]),
        r"sequences",
    ),
    case("pad_sequence-None", lambda: jrnn.pad_sequence(None), r"sequences"),
    case(
        "pad_sequence-padding_value-string",
        lambda: jrnn.pad_sequence([x(3, 2)], padding_value="a"),
        r"padding_value",
        lambda: torch.nn.utils.rnn.pad_sequence([t(x(3, 2))], padding_value="a"),
    ),
    case(
        "pad_sequence-padding_value-None",
        lambda: jrnn.pad_sequence([x(3, 2)], padding_value=None),
        r"padding_value",
        lambda: torch.nn.utils.rnn.pad_sequence([t(x(3, 2))], padding_value=None),
    ),
    case(
        "pad_packed-total_length-float",
        lambda: jrnn.pad_packed_sequence(
            jrnn.pack_padded_sequence(x(), [5, 3, 2, 1]), total_length=6.0
        ),
        r"total_length",
        lambda: torch.nn.utils.rnn.pad_packed_sequence(
            torch.nn.utils.rnn.pack_padded_sequence(t(x()), [5, 3, 2, 1]), total_length=6.0
        ),
    ),
    case(
        "pad_packed-total_length-string",
        lambda: jrnn.pad_packed_sequence(
            jrnn.pack_padded_sequence(x(), [5, 3, 2, 1]), total_length="6"
        ),
        r"total_length",
    ),
    case(
        "pad_packed-padding_value-string",
        lambda: jrnn.pad_packed_sequence(
            jrnn.pack_padded_sequence(x(), [5, 3, 2, 1]), padding_value="a"
        ),
        r"padding_value",
        lambda: torch.nn.utils.rnn.pad_packed_sequence(
            torch.nn.utils.rnn.pack_padded_sequence(t(x()), [5, 3, 2, 1]), padding_value="a"
        ),
    ),
    case("pad_packed-tuple", lambda: jrnn.pad_packed_sequence((x(), LENGTHS_LIKE)), r"sequence"),
    case("unpack-None", lambda: jrnn.unpack_sequence(None), r"sequence"),
    case("unpad-input-None", lambda: jrnn.unpad_sequence(None, [1]), r"padded_sequences"),
    case(
        "unpad-lengths-fractional",
        lambda: jrnn.unpad_sequence(x(), [5, 2.5, 1, 0]),
        r"lengths.*2\.5",
    ),
    case(
        "unpad-lengths-rank-2", lambda: jrnn.unpad_sequence(x(), LENGTHS_LIKE[:, None]), r"lengths"
    ),
]


def prefixed(prefix, cases):
    return [pytest.param(*p.values, id=prefix + p.id) for p in cases]


@pytest.mark.parametrize(
    "call, error, match, torch_call",
    prefixed("lstm-", LSTM_CASES)
    + prefixed("LSTM-", MODULE_CASES)
    + CELL_CASES
    + CONVERSION_CASES
    + RNN_CASES,
)
def test_bad_arguments_are_refused_by_name(call, error, match, torch_call):
    """``ValueError``/``TypeError`` whose message names the argument (where PyTorch has an
    error for the same call, the pattern fits PyTorch's message too)."""
    with pytest.raises(error, match=match):
        call()
    if torch_call is not None:
        with pytest.raises(TORCH_ERRORS, match=match):
            torch_call()


# ======================================================================================
# 7. Traced lengths out of range (documented: above L acts as L, negative as 0)

OUT_OF_RANGE = [
    pytest.param(LENGTHS_CASE, "lstm", [7, -2, 3, 5], [5, 0, 3, 5], id="lengths"),
    pytest.param(UNSORTED_CASE, "lstm", [-1, 9, 2, 6], [0, 5, 2, 5], id="packed-unsorted"),
    pytest.param(SORTED_CASE, "lstm", [9, 5, 2, -1], [5, 5, 2, 0], id="packed-sorted"),
    pytest.param(DIRECT_CASE, "packed-directly", [6, -3, 1, 99], [5, 0, 1, 5], id="packed-direct"),
]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case, call, lengths, clamped", OUT_OF_RANGE)
def test_traced_lengths_out_of_range_act_as_clamped(case, call, lengths, clamped):
    """Bit for bit the clamped lengths' results, which are PyTorch's."""
    params = init_case_params(case, np.float64)
    x, hx, cotangents = random_inputs(case, np.float64)
    lengths, clamped = np.asarray(lengths, np.int32), np.asarray(clamped, np.int32)
    primal, under_grad, grads = run_case(case, call, x, hx, lengths, cotangents, params)
    want = run_case(case, call, x, hx, clamped, cotangents, params)
    # Everything but the PackedSequence's lengths leaf, which keeps what was given.
    assert_trees_equal((primal[:3], under_grad[:3], grads), (want[0][:3], want[1][:3], want[2]))
    module = torch_lstm(jl.params_to_torch(params), batch_first=case.batch_first)
    expected = torch_reference(case, module, x, hx, clamped, cotangents)
    for name, got in zip(("output", "h_n", "c_n"), primal, strict=False):
        assert_close(got, getattr(expected, name), 1e-9, name)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dtype", [np.int64, np.uint32])
def test_traced_lengths_beyond_int32_act_as_clamped(dtype):
    """Lengths of a wider integer dtype must not wrap around when cast: 2**32 + 1 and
    2**31 + 5 are above L (act as L); -2**32 + 3 is negative (acts as 0)."""
    big = [2**32 + 1, -(2**32) + 3, 3, 5] if dtype == np.int64 else [2**31 + 5, 2**32 - 1, 3, 5]
    clamped = [SEQ_LEN, 0, 3, 5] if dtype == np.int64 else [SEQ_LEN, SEQ_LEN, 3, 5]
    params = init_case_params(LENGTHS_CASE, np.float64)
    x, hx, _ = random_inputs(LENGTHS_CASE, np.float64)
    run = jax.jit(lambda p, x, hx, lengths: jl.lstm(p, x, hx, lengths=lengths))
    got = run(params, x, hx, np.asarray(big, dtype))
    want = run(params, x, hx, np.asarray(clamped, dtype))
    assert_trees_equal(got, want, f"lengths {big}")


CHECKIFY_PATHS = [
    pytest.param(lambda p, x, n: jl.lstm(p, x, lengths=n), id="lengths"),
    pytest.param(
        lambda p, x, n: jl.lstm(p, jl.pack_padded_sequence(x, n, enforce_sorted=False)),
        id="pack_padded_sequence",
    ),
    pytest.param(lambda p, x, n: jl.lstm(p, jl.PackedSequence(x, n)), id="PackedSequence"),
]


@pytest.mark.parametrize("call", CHECKIFY_PATHS)
def test_checkify_reports_traced_lengths_out_of_range(call):
    """Documented: inside ``jl.checked_lengths()``, ``checkify.checkify`` reports
    out-of-range traced lengths; outside it (the default) no check is placed."""
    params = jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bidirectional=True)
    inp = np.ones((SEQ_LEN, BATCH, INPUT_SIZE), np.float32)
    run = checkify.checkify(jax.jit(call))
    bad = np.array([7, -2, 3, 5], np.int32)
    error, _ = run(params, inp, bad)
    assert error.get() is None  # unchecked by default
    with jl.checked_lengths():
        error, _ = run(params, inp, np.array([SEQ_LEN, 0, 3, 1], np.int32))
        assert error.get() is None
        error, _ = run(params, inp, bad)  # the same jitted function, retraced checked
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\].*7 -2  3  5"):
            error.throw()
        with jl.checked_lengths(False):
            assert run(params, inp, bad)[0].get() is None
    assert run(params, inp, bad)[0].get() is None
