"""A PyTorch user's habits, against live PyTorch (issue 15).

Type-checked ``bool`` options; ``pad_sequence`` over a stacked array; PyTorch's words for
the errors of ``pad_sequence(5)``, a negative ``total_length``, an ``LSTMCell`` ``hx`` of
the wrong rank and packing an empty batch; ``PackedSequence``'s conversions and
named-tuple unpacking; torch tensors and PyTorch's own ``PackedSequence`` accepted
everywhere (torch never imported otherwise); ``load_state_dict(strict=False)``, weights
by PyTorch's names, ``named_parameters()``/``parameters()``/``all_weights``; a facade
built without ``key`` (PyTorch's habit) refused with a runnable fix; the training
recipes' clipping function (``docs/recipes.md``) against ``torch.nn.utils.clip_grad_norm_``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as trnn
from test_docs import python_blocks

import jaxlstm as jl
import jaxlstm.rnn as jrnn

ROOT = Path(__file__).resolve().parents[1]
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)


def same_error(ours, theirs, error=ValueError):
    """Both calls fail; ours with ``error`` and exactly PyTorch's message."""
    with pytest.raises(TORCH_ERRORS) as expected:
        theirs()
    with pytest.raises(error) as got:
        ours()
    assert str(got.value) == str(expected.value)


def t(a):
    return torch.from_numpy(np.array(a))


# ------------------------------------------------------------------ 1. bool options


@pytest.mark.parametrize(
    "kwargs",
    [{"bias": "False"}, {"batch_first": "False"}, {"batch_first": 1}, {"bias": np.True_}],
    ids=["bias-str", "batch_first-str", "batch_first-int", "bias-numpy-bool"],
)
def test_lstm_bool_options_as_torch(kwargs):
    same_error(
        lambda: jl.LSTM(3, 5, **kwargs, key=jax.random.key(0)),
        lambda: torch.nn.LSTM(3, 5, **kwargs),
        TypeError,
    )


@pytest.mark.parametrize(
    "make, torch_make",
    [
        (
            lambda: jl.LSTM(3, 5, bidirectional="x", key=jax.random.key(0)),
            lambda: torch.nn.LSTM(3, 5, bidirectional="x"),
        ),
        (
            lambda: jl.LSTMCell(3, 5, bias="False", key=jax.random.key(0)),
            lambda: torch.nn.LSTMCell(3, 5, bias="False"),
        ),
        (lambda: jl.init_params(jax.random.key(0), 3, 5, bias="False"), None),
        (lambda: jl.init_params(jax.random.key(0), 3, 5, bidirectional=1), None),
        (lambda: jl.init_cell_params(jax.random.key(0), 3, 5, bias="False"), None),
        (
            lambda: jl.lstm(
                jl.init_params(jax.random.key(0), 3, 5), jnp.ones((2, 1, 3)), batch_first="False"
            ),
            None,
        ),
    ],
    ids=[
        "LSTM-bidirectional",
        "LSTMCell-bias",
        "init-bias",
        "init-bidirectional",
        "init-cell-bias",
        "lstm-batch_first",
    ],
)
def test_more_bool_options_checked_in_pytorchs_words(make, torch_make):
    """Where PyTorch takes any truthy value (documented), jaxlstm refuses in its words."""
    with pytest.raises(TypeError, match=r"^\w+ should be of type bool, got: (str|int)$"):
        make()
    if torch_make is not None:
        torch_make()  # PyTorch accepts it: the difference is deliberate


def test_bool_options_keep_their_meaning():
    assert not jl.LSTM(3, 5, bias=False, key=jax.random.key(0)).bias
    assert jl.LSTM(3, 5, batch_first=True, key=jax.random.key(0))(jnp.ones((2, 7, 3)))[0].shape == (
        2,
        7,
        5,
    )


# ------------------------------------------------------------------ 2. pad_sequence and errors


@pytest.mark.parametrize("shape", [(3, 4, 2), (3, 4)], ids=["3d", "2d"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("form", ["jax", "numpy", "torch"])
def test_pad_sequence_of_a_stacked_array(shape, batch_first, form):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    given = {"jax": jnp.asarray, "numpy": np.asarray, "torch": torch.from_numpy}[form](x)
    got = jl.pad_sequence(given, batch_first=batch_first)
    expected = trnn.pad_sequence(torch.from_numpy(x), batch_first=batch_first)
    np.testing.assert_array_equal(got, expected.numpy())


def test_pad_sequence_of_any_iterable():
    seqs = [np.ones((3, 2), np.float32), np.zeros((1, 2), np.float32)]
    got = jl.pad_sequence(jnp.asarray(s) for s in seqs)
    expected = trnn.pad_sequence(torch.from_numpy(s) for s in seqs)
    np.testing.assert_array_equal(got, expected.numpy())


def test_pad_sequence_not_iterable():
    same_error(lambda: jl.pad_sequence(5), lambda: trnn.pad_sequence(5), TypeError)


@pytest.mark.parametrize("pack", [True, False], ids=["pack_sequence", "pad_sequence"])
def test_empty_list_of_sequences(pack):
    fn = "pack_sequence" if pack else "pad_sequence"
    same_error(lambda: getattr(jrnn, fn)([]), lambda: getattr(trnn, fn)([]))


@pytest.mark.parametrize("total_length", [-1, 2])
def test_total_length_too_small(total_length):
    seqs = [np.ones((3, 2), np.float32)]
    same_error(
        lambda: jl.pad_packed_sequence(
            jl.pack_sequence([jnp.asarray(s) for s in seqs]), total_length=total_length
        ),
        lambda: trnn.pad_packed_sequence(
            trnn.pack_sequence([t(s) for s in seqs]), total_length=total_length
        ),
    )


@pytest.mark.parametrize("slot", [0, 1])
def test_cell_hx_of_wrong_rank(slot):
    hx = [np.ones((2, 4), np.float32), np.ones((2, 4), np.float32)]
    hx[slot] = np.ones((1, 2, 4), np.float32)
    cell = torch.nn.LSTMCell(3, 4)
    same_error(
        lambda: jl.LSTMCell(3, 4, key=jax.random.key(0))(
            jnp.ones((2, 3)), tuple(map(jnp.asarray, hx))
        ),
        lambda: cell(torch.ones(2, 3), tuple(map(t, hx))),
    )


@pytest.mark.parametrize(
    "shape, lengths, batch_first",
    [((3, 0, 2), [], False), ((0, 3, 2), [], True), ((3, 2, 0), [3, 1], False)],
    ids=["no-sequences", "no-sequences-batch-first", "no-features"],
)
def test_pack_empty_batch(shape, lengths, batch_first):
    same_error(
        lambda: jl.pack_padded_sequence(jnp.ones(shape), lengths, batch_first=batch_first),
        lambda: trnn.pack_padded_sequence(
            torch.ones(shape), torch.tensor(lengths, dtype=torch.int64), batch_first=batch_first
        ),
    )


def test_pack_all_empty_sequences_is_the_length_0_extension():
    packed = jl.pack_padded_sequence(jnp.ones((0, 2, 3)), [0, 0])
    assert packed.data.shape == (0, 3)


# ------------------------------------------------------------------ 3. PackedSequence


def _both_packed(dtype=np.float32):
    seqs = [np.arange(6, dtype=dtype).reshape(3, 2), np.ones((1, 2), dtype), np.ones((2, 2), dtype)]
    ours = jl.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=False)
    theirs = trnn.pack_sequence([t(s) for s in seqs], enforce_sorted=False)
    return ours, theirs


@pytest.mark.parametrize(
    "method", ["double", "float", "half", "long", "int", "short", "char", "byte"]
)
def test_packed_dtype_methods_as_torch(method, x64):
    ours, theirs = _both_packed()
    got, expected = getattr(ours, method)(), getattr(theirs, method)()
    assert got.data.dtype == np.dtype(str(expected.data.dtype).removeprefix("torch."))
    np.testing.assert_array_equal(got.data, expected.data.numpy())
    np.testing.assert_array_equal(got.lengths, ours.lengths)  # lengths kept
    for a, b in zip(got, expected, strict=True):  # the view as PyTorch's
        np.testing.assert_array_equal(np.asarray(a), b.numpy())


@pytest.mark.parametrize(
    "args, kwargs, dtype",
    [
        ((jnp.float16,), {}, jnp.float16),
        (("float16",), {}, jnp.float16),
        ((torch.float16,), {}, jnp.float16),
        ((), {"dtype": jnp.bfloat16}, jnp.bfloat16),
        (("cpu", jnp.float16), {}, jnp.float16),
        ((torch.device("cpu"),), {"dtype": torch.int32}, jnp.int32),
    ],
    ids=["jnp", "name", "torch-dtype", "keyword", "device-and-dtype", "torch-device"],
)
def test_packed_to(args, kwargs, dtype):
    ours, _ = _both_packed()
    got = ours.to(*args, **kwargs)
    assert got.data.dtype == dtype and got.padded.dtype == dtype
    np.testing.assert_array_equal(got.data.astype(np.float32), ours.data)
    assert got.enforce_sorted == ours.enforce_sorted


def test_packed_to_returns_self_when_nothing_changes():
    ours, theirs = _both_packed()
    assert theirs.to(torch.float32) is theirs  # PyTorch's rule ...
    device = jax.devices()[0]
    for same in (ours.to(jnp.float32), ours.float(), ours.to(device), ours.cpu(), ours.to("cpu")):
        assert same is ours  # ... and ours
    assert ours.to(jax.sharding.SingleDeviceSharding(device)) is ours
    assert not ours.is_cuda and not theirs.is_cuda


def test_packed_bool_and_bfloat16():
    ours, _ = _both_packed()
    assert ours.bool().data.dtype == jnp.bool_
    assert ours.bfloat16().data.dtype == jnp.bfloat16


def test_packed_to_refuses_what_is_neither():
    ours, _ = _both_packed()
    with pytest.raises(TypeError, match="dtype must be a dtype"):
        ours.to(object())
    with pytest.raises(ValueError, match="device must be"):
        ours.to(device="quantum")


def test_packed_unpacks_and_indexes_as_torchs_named_tuple():
    ours, theirs = _both_packed()
    data, batch_sizes, sorted_indices, unsorted_indices = ours
    assert len(ours) == len(theirs) == 4
    for i, got in enumerate((data, batch_sizes, sorted_indices, unsorted_indices)):
        np.testing.assert_array_equal(np.asarray(got), theirs[i].numpy())
        np.testing.assert_array_equal(np.asarray(ours[i]), theirs[i].numpy())


def test_converted_packed_stays_a_pytree():
    ours, _ = _both_packed()
    doubled = jax.jit(lambda p: p.half())(ours)
    assert isinstance(doubled, jl.PackedSequence) and doubled.padded.dtype == jnp.float16
    np.testing.assert_array_equal(doubled.data, ours.data)


# ------------------------------------------------------------------ 4. torch objects


@pytest.fixture(scope="module")
def torch_pair():
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).eval()
    ours = jl.LSTM(3, 4, num_layers=2, bidirectional=True, key=jax.random.key(0))
    ours.load_state_dict(module.state_dict())
    return module, ours


def test_torch_tensors_everywhere(torch_pair):
    """Input with requires_grad, int64 lengths, hx, params: all torch; PyTorch's numbers."""
    module, ours = torch_pair
    x = torch.randn(5, 3, 3, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    hx = (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    expected, (h_n, c_n) = module(trnn.pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    expected, _ = trnn.pad_packed_sequence(expected)
    params = jax.tree.map(
        lambda a: torch.from_numpy(np.array(a)), ours.params
    )  # a PyTree of torch tensors
    for run in (
        lambda: ours(x, hx, lengths=lengths),
        lambda: jl.lstm(params, x, hx, lengths=lengths),
    ):
        out, (h, c) = run()
        np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(h, h_n.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(c, c_n.detach().numpy(), atol=1e-5)


def test_torch_tensors_in_the_packing_helpers():
    x = torch.randn(4, 3, 2)
    lengths = torch.tensor([2, 4, 1])
    ours = jl.pack_padded_sequence(x, lengths, enforce_sorted=False)
    theirs = trnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b.numpy())
    theirs_unpadded = trnn.unpad_sequence(x.clone(), lengths)  # it transposes x in place
    for a, b in zip(jl.unpad_sequence(x, lengths), theirs_unpadded, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    made = jl.PackedSequence(jnp.asarray(x.numpy()), lengths)  # torch lengths, kept as arrays
    np.testing.assert_array_equal(made.sorted_indices, theirs.sorted_indices.numpy())
    np.testing.assert_array_equal(
        jl.pad_packed_sequence(made)[0],
        x.numpy() * (np.arange(4)[:, None, None] < lengths.numpy()[None, :, None]),
    )


def test_torch_bfloat16_tensor():
    x = torch.randn(5, 2, 3).to(torch.bfloat16)
    params = jl.init_params(jax.random.key(0), 3, 4, dtype=jnp.bfloat16)
    out, _ = jl.lstm(params, x)
    expected, _ = jl.lstm(params, jnp.asarray(x.float().numpy(), jnp.bfloat16))
    np.testing.assert_array_equal(out, expected)


def test_torch_cell_inputs():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4)
    ours = jl.LSTMCell(3, 4, key=jax.random.key(0))
    ours.load_state_dict(cell.state_dict())
    x, hx = torch.randn(2, 3, requires_grad=True), (torch.randn(2, 4), torch.randn(2, 4))
    for got, want in zip(ours(x, hx), cell(x, hx), strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_torchs_packed_sequence_everywhere(torch_pair, enforce_sorted):
    module, ours = torch_pair
    seqs = [torch.randn(n, 3) for n in ((5, 3, 1) if enforce_sorted else (2, 5, 3))]
    packed = trnn.pack_sequence(seqs, enforce_sorted=enforce_sorted)
    expected, (h_n, c_n) = module(packed)
    for out, (h, c) in (ours(packed), jl.lstm(ours.params, packed)):
        assert isinstance(out, jl.PackedSequence)
        for a, b in zip(out, expected, strict=True):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(h, h_n.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(c, c_n.detach().numpy(), atol=1e-5)
    padded, lengths = jl.pad_packed_sequence(packed, batch_first=True, padding_value=-1.0)
    want, want_lengths = trnn.pad_packed_sequence(packed, batch_first=True, padding_value=-1.0)
    np.testing.assert_array_equal(padded, want.numpy())
    np.testing.assert_array_equal(lengths, want_lengths.numpy())
    for a, b in zip(jl.unpack_sequence(packed), trnn.unpack_sequence(packed), strict=True):
        np.testing.assert_array_equal(a, b.numpy())


def test_torch_is_not_imported_without_torch_objects():
    code = (
        "import sys, jax, jax.numpy as jnp, numpy as np, jaxlstm as jl\n"
        "p = jl.pack_sequence([np.ones((3, 2), np.float32), np.ones((1, 2), np.float32)])\n"
        "lstm = jl.LSTM(2, 3, key=jax.random.key(0))\n"
        "lstm(p); lstm(jnp.ones((3, 1, 2)), lengths=np.array([2])); p.double(); p.cpu()\n"
        "lstm.load_state_dict(lstm.state_dict(), strict=False)\n"
        "jl.pad_sequence(np.ones((2, 3, 2), np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


# ------------------------------------------------------------------ 5. state dicts and names


@pytest.mark.parametrize(
    "make",
    [
        lambda lib, **kw: lib.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, **kw),
        lambda lib, **kw: lib.LSTMCell(3, 4, **kw),
    ],
    ids=["LSTM", "LSTMCell"],
)
def test_load_state_dict_not_strict_as_torch(make):
    torch_module = make(torch.nn)
    ours = make(jl, key=jax.random.key(0))
    before = ours.state_dict()
    state_dict = {k: v + 1 for k, v in torch_module.state_dict().items()}
    dropped = list(state_dict)[1]
    del state_dict[dropped]
    state_dict["extra.weight"] = torch.ones(2)
    expected = torch_module.load_state_dict(state_dict, strict=False)
    got = ours.load_state_dict(state_dict, strict=False)
    assert got.missing_keys == expected.missing_keys == [dropped]
    assert got.unexpected_keys == expected.unexpected_keys == ["extra.weight"]
    for name, value in ours.state_dict().items():
        want = before[name] if name == dropped else torch_module.state_dict()[name].numpy()
        np.testing.assert_array_equal(value, want, err_msg=name)
    with pytest.raises(ValueError, match=r"Missing key\(s\) in state_dict: '" + dropped):
        ours.load_state_dict(state_dict)  # strict, as before
    bad = dict(ours.state_dict(), **{dropped: np.ones(3, np.float32)})
    with pytest.raises(ValueError, match=f"size mismatch for {dropped}"):
        ours.load_state_dict(bad, strict=False)  # shapes are checked either way
    assert repr(ours.load_state_dict(ours.state_dict())) == repr(
        torch_module.load_state_dict(torch_module.state_dict())
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda lib, **kw: lib.LSTM(
            3, 4, num_layers=2, bidirectional=True, proj_size=2, bias=False, **kw
        ),
        lambda lib, **kw: lib.LSTM(3, 4, num_layers=3, **kw),
        lambda lib, **kw: lib.LSTMCell(3, 4, **kw),
    ],
    ids=["LSTM-proj-nobias", "LSTM-3-layers", "LSTMCell"],
)
def test_weights_by_torch_names(make):
    torch_module = make(torch.nn)
    ours = make(jl, key=jax.random.key(0))
    ours.load_state_dict(torch_module.state_dict())
    names = [name for name, _ in torch_module.named_parameters()]
    assert [name for name, _ in ours.named_parameters()] == names
    assert [n for n, _ in ours.named_parameters("lstm")] == [f"lstm.{n}" for n in names]
    for (name, array), tensor in zip(
        ours.named_parameters(), torch_module.parameters(), strict=True
    ):
        np.testing.assert_array_equal(getattr(ours, name), tensor.detach().numpy())
        assert getattr(ours, name) is array
    assert len(list(ours.parameters())) == len(names)
    if isinstance(ours, jl.LSTM):
        assert [[w.shape for w in ws] for ws in ours.all_weights] == [
            [tuple(w.shape) for w in ws] for ws in torch_module.all_weights
        ]
    with pytest.raises(AttributeError, match=r"read-only.*load_state_dict"):
        setattr(ours, names[0], jnp.zeros(3))
    with pytest.raises(AttributeError, match="read-only"):
        ours.hidden_size = 7
    with pytest.raises(AttributeError, match="has no attribute 'weight_ih_l9'"):
        _ = ours.weight_ih_l9


def test_weights_by_name_under_jit():
    lstm = jl.LSTM(3, 4, key=jax.random.key(0))
    total = jax.jit(lambda m: sum(p.sum() for p in m.parameters()))(lstm)
    np.testing.assert_allclose(total, sum(v.sum() for v in lstm.state_dict().values()), rtol=1e-5)


# ------------------------------------------------------------------ 6. keys


@pytest.mark.parametrize(
    "make, torch_make",
    [
        (lambda **kw: jl.LSTM(4, 3, 2, **kw), lambda: torch.nn.LSTM(4, 3, 2)),
        (lambda **kw: jl.LSTMCell(4, 3, **kw), lambda: torch.nn.LSTMCell(4, 3)),
    ],
    ids=["LSTM", "LSTMCell"],
)
def test_construction_without_key_shows_a_runnable_fix(make, torch_make):
    """PyTorch draws from its global generator; jaxlstm needs the key (no hidden default
    that would make two same-shaped layers identical). The error is ours, not Python's,
    and the fix it shows runs."""
    torch_make()  # the habit being ported
    for missing in ({}, {"key": None}):
        with pytest.raises(TypeError, match=r"needs a key for its initial weights") as error:
            make(**missing)
    fix = str(error.value).split(": ", 1)[1].split(" (", 1)[0]
    built = eval(fix, {"jl": jl, "jax": jax})  # our own message
    assert type(built) is type(make(key=jax.random.key(0)))
    assert "two same-shaped layers the same weights" in str(error.value)


def test_explicit_key_unchanged():
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        jl.LSTM(4, 3, key=key).params[0][0].w_hh, jl.init_params(key, 4, 3)[0][0].w_hh
    )


# ------------------------------------------------------------------ 7. training recipes


@pytest.fixture(scope="module")
def recipe():
    """The definitions of ``docs/recipes.md`` (the page runs in full in test_docs.py)."""
    namespace: dict = {"jax": jax, "jnp": jnp, "jl": jl}
    (source,) = (s for _, s in python_blocks(ROOT / "docs" / "recipes.md") if "def clip_" in s)
    exec(source, namespace)
    return namespace


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0], ids=["clip", "near", "no-clip"])
def test_clip_grad_norm_is_torchs(recipe, dtype, max_norm, x64):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(7)}
    grads = {k: v.astype(dtype) for k, v in grads.items()}
    tensors = {
        k: torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype, requires_grad=True)
        for k, v in grads.items()
    }
    for k, v in tensors.items():
        v.grad = torch.from_numpy(grads[k].copy())
    total_norm = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    clipped, ours_norm = recipe["clip_grad_norm"](jax.tree.map(jnp.asarray, grads), max_norm)
    tol = {np.float32: 1e-7, np.float64: 1e-15}[dtype]
    np.testing.assert_allclose(ours_norm, total_norm.numpy(), rtol=tol)
    for k, v in tensors.items():
        np.testing.assert_allclose(clipped[k], v.grad.numpy(), rtol=tol, atol=tol)
