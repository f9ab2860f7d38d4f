"""Shared helpers for the PyTorch-parity tests.

The parity tests run jaxlstm and live PyTorch (CPU) on the same weights, inputs and
cotangents and compare outputs, final states and gradients. This module holds what they
share: the tiny sizes, the configuration grid and its covering design, the PyTorch
reference (including the zero-length sequences PyTorch refuses), the jaxlstm runner and
the comparisons.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils import rnn as torch_rnn

import jaxlstm as jl

# The tests compile many small programs and run each a few times: LLVM's optimisations
# cost more compile time than they save (test_module.py: 30 -> 22 s). Set before JAX
# starts its CPU backend (at the first computation, after this file is imported); the
# tests' subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
)

INPUT_SIZE = 3  # H_in
HIDDEN_SIZE = 4  # H
PROJ_SIZE = 2  # P (when the case has a projection)
SEQ_LEN = 5  # L
BATCH = 4  # N

# Valid steps per sequence, in the caller's batch order, N = BATCH, L = SEQ_LEN. Each
# pattern is run on one compiled function (lengths are traced). "sorted" forms use the
# same values in decreasing order.
LENGTH_PATTERNS = {
    "full": (5, 5, 5, 5),
    "mixed": (3, 5, 0, 1),
    "ties-short": (2, 4, 4, 1),
    "zeros": (0, 5, 2, 0),
    "all-zero": (0, 0, 0, 0),
}
UNBATCHED_LENGTHS = (5, 2, 0)

# How the input reaches the LSTM.
FORMS = (
    "padded",  # (L, N, H_in) / (N, L, H_in), no lengths
    "lengths",  # padded plus lengths=, unsorted
    "packed-sorted",  # PackedSequence, enforce_sorted=True on sorted lengths
    "packed-unsorted",  # PackedSequence, enforce_sorted=False on unsorted lengths
    "unbatched",  # (L, H_in)
    "unbatched-lengths",  # (L, H_in) plus a scalar length
)
PACKED_FORMS = ("packed-sorted", "packed-unsorted")

_TORCH_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}

# LayerParams / CellParams field -> PyTorch parameter name stem.
TORCH_STEMS = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_hr": "weight_hr",
}


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """PyTorch on one thread (restored afterwards): on a small shared machine its thread
    pool makes these tiny per-step matmuls far slower (L = 100,000: 9 s vs 0.1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def device_report(script: str, args: Sequence[str], devices: int, timeout: float) -> dict:
    """Runs ``script`` once per argument, concurrently, each on ``devices`` simulated CPU
    devices, and merges the JSON object each prints on its last line.

    The test process has initialised JAX with one device already, so checks that need
    several run in subprocesses (at LLVM optimisation level 0: they are compile-bound,
    and what they compare is compiled alike).
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [
            env.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={devices}",
            "--xla_backend_optimization_level=0",
        ]
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, script, arg],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arg in args
    ]
    merged: dict = {}
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        assert proc.returncode == 0, f"{proc.args[2:]} failed:\n{stdout}\n{stderr}"
        merged.update(json.loads(stdout.strip().splitlines()[-1]))
    return merged


@pytest.fixture
def x64() -> Iterator[None]:
    """Run the test with 64-bit JAX types enabled."""
    with jax.enable_x64(True):
        yield


KERNEL_MISSING = jl._kernel.missing()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Says, after every run, which of the kernel's paths its tests could take (the tests
    of the others skip, saying why)."""
    kernel = jl._kernel
    if kernel._extension is None:
        lines = [f"none ({KERNEL_MISSING})"]
    else:
        lines = [
            kernel.describe_builds(),
            f"impl='auto' takes {kernel.available() or 'the lax.scan path'}"
            + (f" ({KERNEL_MISSING})" if KERNEL_MISSING else ""),
        ]
    for line in lines:
        terminalreporter.write_line(f"jaxlstm's CPU kernel here: {line}")


# The kernel's forward and backward custom calls (one per instruction set) in a program.
KERNEL_FORWARD = re.compile(r"jaxlstm_(avx512|avx2)_lstm_forward")
KERNEL_BACKWARD = re.compile(r"jaxlstm_(avx512|avx2)_lstm_backward")
needs_kernel = pytest.mark.skipif(
    bool(KERNEL_MISSING), reason=f"the fused CPU kernel cannot run here: {KERNEL_MISSING}"
)


def assert_in_kernel(fn: Callable, *args: Any, **static: Any) -> str:
    """Asserts that the program ``fn(*args, **static)`` calls the fused kernel (its forward
    loop; its backward loop too where ``fn`` differentiates): the kernel really runs.
    Returns the lowered program's text."""
    text = jax.jit(fn, static_argnames=tuple(static)).lower(*args, **static).as_text()
    isa = "avx2" if jl._kernel.available() == "avx2" else "avx512"
    assert f"jaxlstm_{isa}_lstm_forward" in text, "the kernel's custom call is not in the program"
    return text


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """The kernel path's derivative structure with plain-JAX stand-ins for its two FFI
    calls, so it runs on CPUs without the kernel.

    ``jaxlstm._kernel`` then says ``"avx512"`` is available, its forward loop is
    ``_scan._scanned`` (no residuals) and its backward loop the reference's VJP.
    Yields a counter: ``["backward"]`` is how many times the backward loop was traced
    (reverse mode took the kernel path). JAX's caches are cleared on the way in and out,
    so that no trace made with or without the stand-ins is reused across them.
    """
    import types

    from jaxlstm import _kernel, _scan

    calls = {"backward": 0}

    def forward(x, w_ih, b, w_hh, h0, c0, lengths, mode, isa, *, save):
        matmul_dtype = None if mode == "f32" else jnp.bfloat16
        y, h_n, c_n = _scan._scanned(x, w_ih, b, w_hh, h0, c0, lengths, matmul_dtype)
        y = y.reshape(*x.shape[:2], len(w_hh), -1)  # (L, N, D*H) -> (L, N, D, H)
        return (y, h_n, c_n, (), (), ()) if save else (y, h_n, c_n)

    def backward(residuals, cotangents, spec):
        calls["backward"] += 1
        (*primals, lengths), _ = residuals
        return jax.vjp(lambda *p: spec.plain(*p, lengths), *primals)[1](cotangents)

    monkeypatch.setattr(_kernel, "_forward", forward)
    monkeypatch.setattr(_kernel, "_backward", backward)
    monkeypatch.setattr(_kernel, "available", lambda: "avx512")
    extension = types.SimpleNamespace(
        isas=lambda: ["avx512", "avx2"],
        supported_bf16=lambda: True,
        supported_amx=lambda: False,
        __file__="fake_kernel (the stand-in of tests/conftest.py)",
    )
    monkeypatch.setattr(_kernel, "_extension", extension)
    monkeypatch.setattr(_kernel, "_amx_granted", lambda: False)
    monkeypatch.setattr(_kernel, "_isas", lambda: ("avx512", "avx2"))
    monkeypatch.setattr(_kernel, "_broken", lambda isa: "")  # no self-test of the stand-ins
    jax.clear_caches()
    yield calls
    jax.clear_caches()


# ---------------------------------------------------------------------------------------
# Configurations and the covering design


@dataclasses.dataclass(frozen=True)
class Case:
    """One point of the configuration grid."""

    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    bias: bool = True
    batch_first: bool = False
    form: str = "padded"
    hx: bool = False
    dropout: float = 0.0

    @property
    def config_id(self) -> str:
        """The parameter configuration part of :attr:`id`."""
        return "-".join(
            [
                f"layers{self.num_layers}",
                "bidir" if self.bidirectional else "unidir",
                f"proj{self.proj_size}" if self.proj_size else "noproj",
                "bias" if self.bias else "nobias",
            ]
        )

    @property
    def id(self) -> str:
        parts = [
            self.config_id,
            "batch_first" if self.batch_first else "time_major",
            self.form,
            "hx" if self.hx else "nohx",
        ]
        if self.dropout:
            parts.append(f"dropout{self.dropout}")
        return "-".join(parts)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        """H_out."""
        return self.proj_size or HIDDEN_SIZE

    @property
    def unbatched(self) -> bool:
        return self.form.startswith("unbatched")

    @property
    def packed(self) -> bool:
        return self.form in PACKED_FORMS

    @property
    def has_lengths(self) -> bool:
        return self.form not in ("padded", "unbatched")

    def length_patterns(self) -> dict[str, Any]:
        """The lengths to run this case with, keyed by a readable name (None: no lengths)."""
        if not self.has_lengths:
            return {"none": None}
        if self.unbatched:
            return {f"len{n}": np.int32(n) for n in UNBATCHED_LENGTHS}
        descending = self.form == "packed-sorted"
        return {
            name: np.asarray(sorted(v, reverse=True) if descending else v, np.int32)
            for name, v in LENGTH_PATTERNS.items()
        }


def pairwise(axes: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """A deterministic covering array of strength 2 over ``axes``.

    Every pair of values of every two axes appears in at least one returned row. Greedy:
    each row starts from the first still-uncovered pair and takes, axis by axis, the value
    that covers most uncovered pairs with the axes already set. Ties go to the value listed
    last, so list each axis from plainest to richest and the filler is the richer option.
    """
    names = list(axes)
    sizes = [len(axes[name]) for name in names]

    def pair(a: int, i: int, b: int, j: int) -> tuple[int, int, int, int]:
        return (a, i, b, j) if a < b else (b, j, a, i)

    uncovered = {
        (a, i, b, j)
        for a, b in itertools.combinations(range(len(names)), 2)
        for i in range(sizes[a])
        for j in range(sizes[b])
    }
    rows = []
    while uncovered:
        a, i, b, j = min(uncovered)
        row = {a: i, b: j}
        for axis in range(len(names)):
            if axis not in row:
                row[axis] = max(
                    reversed(range(sizes[axis])),
                    key=lambda v, axis=axis: sum(
                        pair(axis, v, other, w) in uncovered for other, w in row.items()
                    ),
                )
        uncovered -= {pair(a, row[a], b, row[b]) for a, b in itertools.combinations(row, 2)}
        rows.append({names[axis]: axes[names[axis]][row[axis]] for axis in range(len(names))})
    return rows


def case_params(cases: Sequence[Case]) -> list[Any]:
    """``pytest.param`` per case, with its readable id."""
    return [pytest.param(case, id=case.id) for case in cases]


def pairwise_cases(axes: dict[str, Sequence[Any]]) -> list[Any]:
    """``pytest.param`` per row of the pairwise covering design over ``axes``."""
    return case_params([Case(**row) for row in pairwise(axes)])


# ---------------------------------------------------------------------------------------
# Params, inputs and naming


def init_case_params(case: Case, dtype: Any = None, seed: int = 0) -> Any:
    """jaxlstm params for ``case`` (``dtype=None``: the library's default)."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    return jl.init_params(
        jax.random.key(seed),
        INPUT_SIZE,
        HIDDEN_SIZE,
        case.num_layers,
        bias=case.bias,
        bidirectional=case.bidirectional,
        proj_size=case.proj_size,
        **kwargs,
    )


def torch_names(params: Any) -> Iterator[tuple[str, Any]]:
    """``(torch name, array)`` for every array of LSTM ``params`` (an independent mapping)."""
    for layer, directions in enumerate(params):
        for direction, layer_params in enumerate(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for field, stem in TORCH_STEMS.items():
                array = getattr(layer_params, field)
                if array is not None:
                    yield stem + suffix, array


def cell_torch_names(params: Any) -> Iterator[tuple[str, Any]]:
    """``(torch name, array)`` for every array of cell ``params``."""
    for field in params._fields:
        array = getattr(params, field)
        if array is not None:
            yield TORCH_STEMS[field], array


def torch_dtype(dtype: Any) -> torch.dtype:
    return _TORCH_DTYPES[np.dtype(dtype)]


def torch_lstm(
    state_dict: dict[str, np.ndarray], *, batch_first: bool = False, dropout: float = 0.0
) -> torch.nn.LSTM:
    """A ``torch.nn.LSTM`` (eval mode) loaded, strictly, from a numpy ``state_dict``.

    The configuration is read from PyTorch's names and shapes, e.g. of
    ``jl.params_to_torch(params)`` or ``jl.LSTM.state_dict()``.
    """
    first = state_dict["weight_ih_l0"]
    module = torch.nn.LSTM(
        first.shape[1],
        state_dict["weight_hh_l0"].shape[0] // 4,
        sum(name.startswith("weight_ih_l") for name in state_dict)
        // (2 if "weight_ih_l0_reverse" in state_dict else 1),
        bias="bias_ih_l0" in state_dict,
        batch_first=batch_first,
        dropout=dropout,
        bidirectional="weight_ih_l0_reverse" in state_dict,
        proj_size=state_dict["weight_hr_l0"].shape[0] if "weight_hr_l0" in state_dict else 0,
        dtype=torch_dtype(first.dtype),
    )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    return module.eval()


def random_inputs(
    case: Case, dtype: Any, seed: int = 1
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, tuple[np.ndarray, ...]]:
    """``(x, hx or None, cotangents of (output, h_n, c_n))``, all numpy, for ``case``."""
    rng = np.random.default_rng(seed)
    slots = case.num_layers * case.num_directions
    batch = () if case.unbatched else (BATCH,)
    if case.unbatched:
        x_shape = (SEQ_LEN, INPUT_SIZE)
    elif case.batch_first:
        x_shape = (BATCH, SEQ_LEN, INPUT_SIZE)
    else:
        x_shape = (SEQ_LEN, BATCH, INPUT_SIZE)
    out_shape = (*x_shape[:-1], case.num_directions * case.out_size)
    h_shape = (slots, *batch, case.out_size)
    c_shape = (slots, *batch, HIDDEN_SIZE)

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    x = normal(x_shape)
    hx = (normal(h_shape), normal(c_shape)) if case.hx else None
    return x, hx, (normal(out_shape), normal(h_shape), normal(c_shape))


# ---------------------------------------------------------------------------------------
# Results and comparison


@dataclasses.dataclass
class Result:
    """What one run gives, as numpy: padded output, final states, gradients by name.

    ``grads`` holds ``input``, ``h_0`` and ``c_0`` (when hx is given) and every parameter
    under its PyTorch name. ``packed_data`` / ``batch_sizes`` are PyTorch's packed view of
    the output (packed forms only); ``packed_indices`` its ``(sorted_indices,
    unsorted_indices)``, each ``None`` where PyTorch has none (packed forms without a
    zero length only: PyTorch's batch then has all the sequences).
    """

    output: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    grads: dict[str, np.ndarray]
    packed_data: np.ndarray | None = None
    batch_sizes: np.ndarray | None = None
    packed_indices: tuple | None = None


def assert_close(actual: Any, expected: Any, tol: float, what: str) -> None:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def assert_results_close(
    actual: Result, expected: Result, tol: float, where: str, *, grads: bool = True
) -> None:
    """Compare every field of two results (``grads=False``: values only), naming the first
    that differs."""
    for field in ("output", "h_n", "c_n", "packed_data", "batch_sizes"):
        want = getattr(expected, field)
        if want is not None:
            assert_close(getattr(actual, field), want, tol, f"{where} {field}")
    if expected.packed_indices is not None:
        for name, got, want in zip(
            ("sorted_indices", "unsorted_indices"),
            actual.packed_indices,
            expected.packed_indices,
            strict=True,
        ):
            if want is None:
                assert got is None, f"{where} {name}: {got}, PyTorch has None"
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{where} {name}")
    if grads:
        assert_all_close(actual.grads, expected.grads, tol, f"{where} d loss / d")


def assert_all_close(actual: dict, expected: dict, tol: float, where: str) -> None:
    """Same keys, and every array close to the one under the same key."""
    assert sorted(actual) == sorted(expected), where
    for name, want in expected.items():
        assert_close(actual[name], want, tol, f"{where} {name}")


def assert_padding_grad_zero(case: Case, grad_x: np.ndarray, lengths: Any) -> None:
    """The input gradient is exactly zero at every step past a sequence's length."""
    if lengths is None:
        return
    steps = np.arange(SEQ_LEN)
    if case.unbatched:
        padded = steps >= lengths  # (L,)
    elif case.batch_first:
        padded = steps[None, :] >= lengths[:, None]  # (N, L)
    else:
        padded = steps[:, None] >= lengths[None, :]  # (L, N)
    leaked = np.abs(np.asarray(grad_x)[padded]).max(initial=0.0)
    assert leaked == 0.0, f"gradient leaks into padded input positions: max |grad| {leaked}"


def loss_of(output: Any, h_n: Any, c_n: Any, cotangents: Sequence[Any]) -> Any:
    """The weighted sum that makes every output, h_n and c_n entry matter."""
    g_out, g_h, g_c = cotangents
    return (output * g_out).sum() + (h_n * g_h).sum() + (c_n * g_c).sum()


# ---------------------------------------------------------------------------------------
# PyTorch reference


def _grad_or_zeros(tensor: torch.Tensor) -> np.ndarray:
    """``tensor.grad`` as numpy; zeros where nothing reached it."""
    return (torch.zeros_like(tensor) if tensor.grad is None else tensor.grad).numpy()


def torch_reference(
    case: Case,
    module: torch.nn.LSTM,
    x: np.ndarray,
    hx: tuple[np.ndarray, np.ndarray] | None,
    lengths: Any,
    cotangents: Sequence[np.ndarray],
) -> Result:
    """Run live PyTorch on ``case``; zero-length sequences are handled as the contract says.

    PyTorch refuses length 0, so those sequences are left out of its batch: their outputs
    are zero, their ``h_n``/``c_n`` are ``h_0``/``c_0`` (gradients flow to ``h_0``/``c_0``
    unchanged) and their input gets no gradient; the others are PyTorch's own results.
    """
    module.zero_grad()
    tx = torch.tensor(x, requires_grad=True)
    thx = None if hx is None else tuple(torch.tensor(a, requires_grad=True) for a in hx)
    packed_data = batch_sizes = packed_indices = None
    if lengths is None:
        output, (h_n, c_n) = module(tx, thx)
    elif case.unbatched:
        output, (h_n, c_n) = _torch_unbatched_length(case, module, tx, thx, int(lengths))
    else:
        output, (h_n, c_n), packed = _torch_packed(case, module, tx, thx, np.asarray(lengths))
        if packed is None:
            packed_data = np.zeros((0, case.num_directions * case.out_size), x.dtype)
            batch_sizes = np.zeros(0, np.int64)
        else:
            packed_data = packed.data.detach().numpy()
            batch_sizes = packed.batch_sizes.numpy()
            if np.all(lengths > 0):
                packed_indices = tuple(
                    None if i is None else i.numpy()
                    for i in (packed.sorted_indices, packed.unsorted_indices)
                )
    loss = loss_of(output, h_n, c_n, [torch.from_numpy(g) for g in cotangents])
    if loss.requires_grad:  # else nothing reaches a parameter (all lengths 0, no hx)
        loss.backward()
    grads = {"input": _grad_or_zeros(tx)}
    if thx is not None:
        grads["h_0"], grads["c_0"] = (_grad_or_zeros(t) for t in thx)
    grads.update((name, _grad_or_zeros(p)) for name, p in module.named_parameters())
    return Result(
        output=output.detach().numpy(),
        h_n=h_n.detach().numpy(),
        c_n=c_n.detach().numpy(),
        grads=grads,
        packed_data=packed_data if case.packed else None,
        batch_sizes=batch_sizes if case.packed else None,
        packed_indices=packed_indices if case.packed else None,
    )


def _zero_state(case: Case, like: torch.Tensor, batch: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    slots = case.num_layers * case.num_directions
    return (
        like.new_zeros((slots, *batch, case.out_size)),
        like.new_zeros((slots, *batch, HIDDEN_SIZE)),
    )


def _torch_unbatched_length(case, module, tx, thx, length):
    """Unbatched input with a scalar length: PyTorch on the valid prefix, zero-padded."""
    if length == 0:
        h_0, c_0 = thx if thx is not None else _zero_state(case, tx, ())
        output = tx.new_zeros((SEQ_LEN, case.num_directions * case.out_size))
        return output, (h_0, c_0)
    output, state = module(tx[:length], thx)  # (length, D*H_out)
    return torch.nn.functional.pad(output, (0, 0, 0, SEQ_LEN - length)), state


def _torch_packed(case, module, tx, thx, lengths):
    """Batched input with lengths: PyTorch packed on the sequences of nonzero length."""
    batch_axis = 0 if case.batch_first else 1
    h_0, c_0 = thx if thx is not None else _zero_state(case, tx, (BATCH,))
    output = tx.new_zeros((*tx.shape[:-1], case.num_directions * case.out_size))
    keep = np.flatnonzero(lengths > 0)
    if keep.size == 0:
        return output, (h_0, c_0), None
    idx = torch.from_numpy(keep)
    packed_in = torch_rnn.pack_padded_sequence(
        tx.index_select(batch_axis, idx),
        torch.from_numpy(lengths[keep].astype(np.int64)),
        batch_first=case.batch_first,
        enforce_sorted=case.form == "packed-sorted",
    )
    sub_hx = None if thx is None else (h_0.index_select(1, idx), c_0.index_select(1, idx))
    packed_out, (h_sub, c_sub) = module(packed_in, sub_hx)
    out_sub, _ = torch_rnn.pad_packed_sequence(
        packed_out, batch_first=case.batch_first, total_length=SEQ_LEN
    )
    output = output.index_copy(batch_axis, idx, out_sub)
    state = (h_0.index_copy(1, idx, h_sub), c_0.index_copy(1, idx, c_sub))
    return output, state, packed_out


# ---------------------------------------------------------------------------------------
# jaxlstm runner


def apply_lstm(case: Case, call: Callable[..., Any], x: Any, hx: Any, lengths: Any) -> tuple:
    """Feed ``x`` to ``call(input, hx, **kw)`` in ``case``'s form.

    Returns ``(padded output, h_n, c_n, packed output or None)``.
    """
    if case.packed:
        packed = jl.pack_padded_sequence(
            x, lengths, batch_first=case.batch_first, enforce_sorted=case.form == "packed-sorted"
        )
        packed_out, (h_n, c_n) = call(packed, hx)
        output, _ = jl.pad_packed_sequence(
            packed_out, batch_first=case.batch_first, total_length=SEQ_LEN
        )
        return output, h_n, c_n, packed_out
    kwargs = {"lengths": lengths} if case.has_lengths else {}
    output, (h_n, c_n) = call(x, hx, **kwargs)
    return output, h_n, c_n, None


def compiled_run(case: Case, call: Callable[..., Any]) -> Callable[..., Any]:
    """One jitted function running both jaxlstm paths for ``case``.

    ``call(model, input, hx, **kw)`` runs the LSTM (``model``: params or a module). The
    result of ``run(model, x, hx, lengths, cotangents)`` is ``(primal, (under_grad,
    grads))``: the plain forward results, the forward results under ``value_and_grad`` of the
    weighted-sum loss, and its gradients w.r.t. ``(model, x, hx)``. One executable per case
    keeps compile time down.
    """

    def forward(model, x, hx, lengths):
        return apply_lstm(case, lambda inp, h, **kw: call(model, inp, h, **kw), x, hx, lengths)

    def loss(model, x, hx, lengths, cotangents):
        results = forward(model, x, hx, lengths)
        return loss_of(*results[:3], cotangents), results

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)

    def run(model, x, hx, lengths, cotangents):
        (_, under_grad), grads = value_and_grad(model, x, hx, lengths, cotangents)
        return forward(model, x, hx, lengths), (under_grad, grads)

    return jax.jit(run)


def jax_result(
    forward_results: tuple, grads: tuple | None = None, params_grad: Any = None
) -> Result:
    """Package jaxlstm results like :func:`torch_reference` does.

    ``grads`` is ``(d model, d x, d hx)``; ``params_grad`` the LSTM params part of ``d model``.
    """
    output, h_n, c_n, packed_out = forward_results
    named = {}
    if grads is not None:
        named["input"] = np.asarray(grads[1])
        if grads[2] is not None:
            named["h_0"], named["c_0"] = (np.asarray(g) for g in grads[2])
        named.update((name, np.asarray(g)) for name, g in torch_names(params_grad))
    return Result(
        output=np.asarray(output),
        h_n=np.asarray(h_n),
        c_n=np.asarray(c_n),
        grads=named,
        packed_data=None if packed_out is None else np.asarray(packed_out.data),
        batch_sizes=None if packed_out is None else np.asarray(packed_out.batch_sizes),
        packed_indices=None
        if packed_out is None
        else tuple(
            None if i is None else np.asarray(i)
            for i in (packed_out.sorted_indices, packed_out.unsorted_indices)
        ),
    )


def call_lstm(params: Any, inp: Any, hx: Any, *, batch_first: bool = False, **kwargs: Any):
    """``jl.lstm`` in the ``call`` form :func:`compiled_run` takes."""
    return jl.lstm(params, inp, hx, batch_first=batch_first, **kwargs)


def check_parity(
    case: Case,
    model: Any,
    call: Callable[..., Any],
    state_dict: dict[str, np.ndarray],
    *,
    dtype: Any,
    tol: float,
    params_of: Callable[[Any], Any] = lambda params: params,
    inputs: tuple | None = None,
) -> None:
    """jaxlstm (primal and gradient paths) against PyTorch, over every length pattern.

    ``model`` is run by ``call`` (see :func:`compiled_run`); ``params_of`` extracts the LSTM
    params from its gradient; ``state_dict`` loads the PyTorch twin. ``inputs`` (default
    :func:`random_inputs` in ``dtype``) are numpy ``(x, hx, cotangents)`` for PyTorch; jaxlstm
    gets them cast to ``dtype``. One compiled function per path serves every pattern:
    lengths are traced values.
    """
    x, hx, cotangents = random_inputs(case, dtype) if inputs is None else inputs
    module = torch_lstm(state_dict, batch_first=case.batch_first, dropout=case.dropout)
    run = compiled_run(case, call)
    jx, jhx, jcot = jax.tree.map(lambda a: jnp.asarray(a, dtype), (x, hx, cotangents))
    for name, lengths in case.length_patterns().items():
        where = f"[lengths {name}]"
        expected = torch_reference(case, module, x, hx, lengths, cotangents)
        primal, (under_grad, grads) = run(model, jx, jhx, lengths, jcot)
        for array in (*primal[:3], *under_grad[:3]):
            assert array.dtype == dtype, f"{where} result dtype {array.dtype}, want {dtype}"
        actual = jax_result(under_grad, grads, params_of(grads[0]))
        assert_results_close(actual, expected, tol, f"{where} under grad")
        assert_padding_grad_zero(case, actual.grads["input"], lengths)
        assert_results_close(jax_result(primal), expected, tol, f"{where} primal", grads=False)
