"""Argument checks shared by every public entry point.

Each check raises ``ValueError``/``TypeError`` naming the argument, what was expected and
what came, in PyTorch's words where PyTorch has words. Checks on values (not shapes)
run only where the values are concrete; under ``jax.jit`` they are skipped and the
documented traced behaviour applies.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def concrete(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array when its value is known now, ``None`` when it is traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def check_int(name: str, value: Any, *, minimum: int | None) -> None:
    """Requires a Python/numpy integer ``>= minimum`` (bools refused; ``None``: any)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if minimum is not None and value < minimum:
        words = "greater than zero" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {words}, got {value}")


def check_bool(name: str, value: Any) -> None:
    """Requires a Python ``bool`` (PyTorch's words: ``bias should be of type bool, got: str``).

    As PyTorch's ``isinstance(value, bool)``: ``0``, ``1``, ``numpy.bool_`` and strings are
    refused, so that ``bias="False"`` can't silently mean ``True``.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def check_sizes(*, input_size: Any, hidden_size: Any, num_layers: Any = 1, proj_size: Any = 0):
    """The constructor sizes of ``torch.nn.LSTM``, with PyTorch's messages."""
    check_int("input_size", input_size, minimum=1)
    check_int("hidden_size", hidden_size, minimum=1)
    check_int("num_layers", num_layers, minimum=1)
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError(
            "proj_size should be a positive integer or zero to disable projections, "
            f"got {proj_size}"
        )
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
            f"and hidden_size={hidden_size}"
        )


def check_static(name: str, value: Any) -> None:
    """Refuses a traced value for an option that shapes the computation."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a Python value, not a traced array: it decides the shape of the "
            f"computation. Under jax.jit, mark it static, e.g. "
            f"jax.jit(jaxlstm.lstm, static_argnames=({name!r},))"
        )


def check_dropout(dropout: Any, num_layers: int) -> float:
    """``0 <= dropout <= 1`` (PyTorch's words); warns as PyTorch for one layer."""
    check_static("dropout", dropout)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(
            "dropout should be a number in range [0, 1] representing the probability of "
            f"an element being zeroed, got {type(dropout).__name__}"
        )
    if not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of "
            f"an element being zeroed, got {dropout}"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            UserWarning,
            stacklevel=3,
        )
    return float(dropout)


def check_floating(name: str, x: Any) -> jax.Array:
    """``x`` as a JAX array, which must have a floating dtype (``TypeError`` otherwise)."""
    x = as_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float16, bfloat16, float32, float64), "
            f"got dtype {x.dtype}"
        )
    return x


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a PyTorch object (read off its type's module: torch isn't imported)."""
    return type(x).__module__.partition(".")[0] == "torch"


def from_torch(x: Any) -> Any:
    """A torch tensor as a numpy array (detached, on the CPU; bfloat16 kept as numpy's
    ``ml_dtypes.bfloat16``); anything else as it is. Never imports torch."""
    if not (is_torch(x) and hasattr(x, "detach")):
        return x
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":  # numpy() has no bfloat16: go through float32
        return x.float().numpy().astype(jnp.bfloat16)
    return x.numpy()


def as_array(name: str, x: Any, convert: Any = jnp.asarray) -> Any:
    """``convert(x)``, refusing what is not array-like with an error naming ``name``.

    Torch tensors are converted first (:func:`from_torch`), so ``requires_grad`` ones and
    every dtype are accepted.
    """
    x = from_torch(x)
    try:
        x = convert(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from None
    if not (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    return x


def check_number(name: str, value: Any) -> None:
    """Requires a real number (not a bool, string or ``None``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def check_key(key: Any) -> None:
    """Requires ``None`` or a ``jax.random`` key (typed, or a raw ``uint32 (2,)`` array)."""
    if key is None:
        return
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
    if not (typed or raw):
        raise TypeError(
            "key must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)) "
            f"or None, got {type(key).__name__}"
            + (f" of dtype {dtype} and shape {getattr(key, 'shape', None)}" if dtype else "")
        )


def check_matmul_dtype(matmul_dtype: Any, dtype: Any = None) -> Any:
    """A floating dtype for the matmuls' operands, or ``None`` when it is ``dtype``."""
    if matmul_dtype is None:
        return None
    try:
        md = jnp.dtype(matmul_dtype)
    except TypeError:
        raise TypeError(
            f"matmul_dtype must be a floating dtype or None, got {matmul_dtype!r}"
        ) from None
    if not jnp.issubdtype(md, jnp.floating):
        raise TypeError(f"matmul_dtype must be a floating dtype or None, got {md}")
    return None if dtype is not None and md == jnp.dtype(dtype) else md


class _Flag:
    """``jax.make_user_context``'s stand-in on a jax without it: a flag read when a
    function is traced, not part of ``jax.jit``'s cache key."""

    value = False

    @contextlib.contextmanager
    def __call__(self, value: bool) -> Iterator[None]:
        previous, self.value = self.value, value
        try:
            yield
        finally:
            self.value = previous


# Part of jax.jit's cache key where JAX allows it: entering or leaving the context retraces.
_checked = jax.make_user_context(False) if hasattr(jax, "make_user_context") else _Flag()


def checked_lengths(enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context in which traced ``lengths`` are checked, for ``checkify`` to report.

    Outside ``jax.jit``, lengths outside ``[0, L]`` always raise a ``ValueError``. Traced
    lengths can't raise; by default a length above ``L`` acts as ``L`` and a negative one
    as ``0``. Functions traced inside this context also place a
    ``jax.experimental.checkify.debug_check`` on traced lengths, so that running them
    under ``checkify.checkify`` reports out-of-range lengths. It is opt-in because the
    check is an effect that ``jax.export`` cannot serialise. Entering or leaving the
    context retraces jitted functions (on a jax without ``jax.make_user_context``, it is
    read only when a function is traced: trace it inside the context).

    Args:
        enabled: ``False`` turns the checks off again inside an enclosing context.

    Example:
        >>> from jax.experimental import checkify
        >>> params = init_params(jax.random.key(0), 5, 3)
        >>> run = jax.jit(lambda x, n: lstm(params, x, lengths=n)[0])
        >>> with checked_lengths():
        ...     err, _ = checkify.checkify(run)(jnp.ones((4, 2, 5)), jnp.array([9, 2]))
        >>> err.get().startswith("lengths must lie in [0, 4]")
        True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    return _checked(enabled)


def check_lengths(lengths: Any, *, batch: int | None, max_len: int, name: str = "lengths"):
    """Validates per-sequence lengths; returns them as an integer JAX array.

    Args:
        lengths: ``(N,)`` (or a scalar when ``batch`` is ``None``: unbatched input).
        batch: ``N``, or ``None`` for a scalar.
        max_len: ``L``, the padded length; concrete lengths must lie in ``[0, L]``.
        name: the argument's name in messages.

    Traced lengths (under ``jax.jit``) cannot be checked when traced: a length above
    ``L`` then acts as ``L`` and a negative one as ``0``. Inside :func:`checked_lengths`
    they get a ``checkify.debug_check``, which ``jax.experimental.checkify.checkify``
    reports.
    """
    if lengths is None:
        raise TypeError(f"{name} must be an integer array, got None")
    if not isinstance(lengths, (jax.Array, np.ndarray, np.generic)):
        lengths = as_array(name, lengths, np.asarray)  # lists, torch tensors, nnx.Param
    want_ndim = 0 if batch is None else 1
    if lengths.ndim != want_ndim:
        shape = "a scalar" if batch is None else f"a 1-D array of shape ({batch},)"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(lengths.shape)}")
    if batch is not None and lengths.shape[0] != batch:
        raise ValueError(
            f"Expected `len({name})` to be equal to batch_size, but got "
            f"{lengths.shape[0]} (batch_size={batch})"
        )
    values = concrete(lengths)
    is_int = jnp.issubdtype(lengths.dtype, jnp.integer)
    whole_floats = lengths.dtype in (np.float32, np.float64) and values is not None
    if not is_int and not whole_floats:  # bfloat16 and float16 can't even hold 257
        raise TypeError(f"{name} must be an integer array, got dtype {lengths.dtype}")
    if values is None:
        if _checked.value:
            message = f"{name} must lie in [0, {max_len}] (the padded sequence length), got "
            checkify.debug_check(
                jnp.all((lengths >= 0) & (lengths <= max_len)),
                message + "{lengths}",  # formatted by checkify
                lengths=lengths,
            )
    else:
        if not is_int and not np.all(values == np.round(values)):
            raise TypeError(f"{name} must hold whole numbers, got {values.tolist()}")
        if values.size and (values.min() < 0 or values.max() > max_len):
            raise ValueError(
                f"{name} must lie in [0, {max_len}] (the padded sequence length), got "
                f"{values.tolist()}"
            )
    # Clip before narrowing, so that a traced int64 length of 2**32 + 1 acts as L, not 1.
    return jnp.clip(jnp.asarray(lengths), 0, max_len).astype(jnp.int32)


IMPLS = ("auto", "scan", "cpu_kernel", "cudnn")
"""The values of :func:`jaxlstm.lstm`'s ``impl``."""


def check_impl(impl: Any) -> None:
    """Requires one of :data:`IMPLS` (a Python string: it picks the compiled program)."""
    check_static("impl", impl)
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
