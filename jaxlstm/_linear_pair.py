"""A linear map and its transpose, each with an implementation of its own.

JAX gets reverse mode by transposing forward mode: a ``custom_jvp`` whose tangent is
linear in the input tangents is all a function needs for ``jvp``, ``grad`` and every
higher order. jaxlstm's reverse mode is faster than JAX's transpose of its tangent: a
hand-written backward loop (``jaxlstm._scan``) or the fused CPU kernel's
(``jaxlstm._kernel``). :func:`linear_pair` makes two JAX primitives, ``A`` (the map)
and ``A^T`` (its transpose), each the other's transpose, each with

* ``impl(residuals, linear, spec)``: what runs (for ``A^T`` the hand-written loop);
* ``plain(residuals, linear, spec)``: the same map in plain JAX, whose derivatives give
  the primitive's own derivative in every argument (second order and beyond; the
  residuals' tangents included);

and a batching rule that keeps the primitive (so the transpose of a vmapped tangent is
still the hand-written loop): each ``vmap`` level adds a tuple of input axes (``0`` or ``None`` per
operand) and the implementation runs under the matching ``jax.vmap``\\ s.

Operands are pytrees, flattened into the primitive's operands; ``residuals`` are the
values the map depends on non-linearly, ``linear`` the ones it is linear in. ``spec`` is
any hashable, static value.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

Fn = Callable[[Any, Any, Any], Any]


def linear_pair(
    name: str, impl: Fn, plain: Fn, impl_t: Fn, plain_t: Fn
) -> Callable[[Any, Any, Any], Any]:
    """The map ``A`` as a function ``apply(residuals, linear, spec) -> outputs``.

    Args:
        name: the primitives' names are ``name`` and ``name + "_transpose"``.
        impl: ``A``'s implementation, ``(residuals, linear, spec) -> outputs`` (pytrees).
        plain: ``A`` in plain JAX (differentiable).
        impl_t: ``A^T``'s implementation, ``(residuals, cotangents of the outputs, spec)
            -> cotangents of linear`` (a pytree like ``linear``).
        plain_t: ``A^T`` in plain JAX (differentiable).

    Returns:
        ``apply(residuals, linear, spec, like)``, ``like`` a pytree of arrays shaped,
        typed and sharded as the outputs (e.g. the primal outputs, for a tangent): binds
        ``A``; transposing it binds ``A^T`` and the other way round.

    Not for values that vary over ``shard_map``'s mesh axes (:func:`varying`): the
    implementations' results there would need JAX's own transposes (which ``psum``).
    """
    forward, transpose = Primitive(name), Primitive(name + "_transpose")
    _define(forward, impl, plain, transpose)
    _define(transpose, impl_t, plain_t, forward)

    def apply(residuals, linear, spec, like):
        res, res_tree = jax.tree.flatten(residuals)
        lin, lin_tree = jax.tree.flatten(linear)
        like, out_tree = jax.tree.flatten(like)
        results = forward.bind(
            *res,
            *lin,
            spec=spec,
            trees=(res_tree, lin_tree, out_tree),
            avals=tuple(jax.typeof(a) for a in like),
            levels=(),
        )
        return jax.tree.unflatten(out_tree, results)

    return apply


def accelerated(
    name: str, forward: Callable, backward: Fn, plain: Callable, linear: int
) -> Callable[[tuple, Any], Any]:
    """A layer that runs an accelerated forward pass (a fused kernel, cuDNN) and
    differentiates through it: its JVP runs the forward pass that keeps residuals, then a
    tangent made by :func:`linear_pair`, whose forward mode is ``plain``'s ``jax.jvp``
    (plain JAX), whose transpose (reverse mode) is ``backward``, the accelerated backward
    pass, and whose own derivatives (second order) and ``vmap`` of reverse mode are JAX's
    transposes of the plain tangent. The residuals' tangents are zero: the tangent
    primitives' derivatives read the operands, never the residuals.

    Args:
        name: the tangent primitive's name.
        forward: ``forward(operands, spec, save) -> outputs`` (a tuple), or with ``save``
            ``(outputs, residuals)``.
        backward: ``backward((operands, residuals), cotangents of outputs, spec)`` -> the
            cotangents of ``operands[:linear]``.
        plain: ``plain(operands, spec) -> outputs`` in plain JAX (differentiable).
        linear: how many leading operands are differentiated (the rest, e.g. integer
            lengths, are not).

    Returns:
        ``apply(operands, spec) -> outputs`` (``spec`` static and hashable).
    """

    def plain_tangent(residuals, tangents, spec):
        operands, _ = residuals
        rest = operands[linear:]
        return jax.jvp(lambda *p: plain((*p, *rest), spec), operands[:linear], tangents)[1]

    def plain_backward(residuals, cotangents, spec):
        operands, _ = residuals
        rest = operands[linear:]
        return jax.vjp(lambda *p: plain((*p, *rest), spec), *operands[:linear])[1](cotangents)

    tangent = linear_pair(name, plain_tangent, plain_tangent, backward, plain_backward)

    @partial(jax.custom_jvp, nondiff_argnums=(1,))
    def apply(operands, spec):
        return forward(operands, spec, save=False)

    @partial(jax.custom_jvp, nondiff_argnums=(1,))
    def saved(operands, spec):
        return forward(operands, spec, save=True)

    def tangents_of(spec, primals, tangents):
        """``((outputs, residuals), the outputs' tangents)``."""
        (operands,), (t_operands,) = primals, tangents
        out, residuals = saved(operands, spec)
        return (out, residuals), tangent((operands, residuals), t_operands[:linear], spec, out)

    @apply.defjvp
    def apply_jvp(spec, primals, tangents):
        (out, _), t_out = tangents_of(spec, primals, tangents)
        return out, t_out

    @saved.defjvp
    def saved_jvp(spec, primals, tangents):
        (out, residuals), t_out = tangents_of(spec, primals, tangents)
        return (out, residuals), (t_out, jax.tree.map(jnp.zeros_like, residuals))

    return apply


def varying(x: Any) -> frozenset:
    """The mesh axes ``x`` varies over inside ``shard_map`` (empty outside)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(getattr(manual, "varying", None) or getattr(aval, "vma", None) or ())


def _run(fn: Fn, args, *, spec, trees, avals, levels) -> list:
    """``fn`` on flat operands ``args``, under one ``jax.vmap`` per level (the first
    outermost); returns the flat outputs, every level's axis in front (outermost first)."""
    del avals
    res_tree, lin_tree, _ = trees

    def flat(*args):
        res = jax.tree.unflatten(res_tree, args[: res_tree.num_leaves])
        lin = jax.tree.unflatten(lin_tree, args[res_tree.num_leaves :])
        return jax.tree.leaves(fn(res, lin, spec))

    for axes in reversed(levels):
        flat = jax.vmap(flat, in_axes=axes)
    return flat(*args)


def _define(prim: Primitive, impl: Fn, plain: Fn, other: Primitive) -> None:
    """Gives ``prim`` its evaluation, shapes, lowering, derivative, transpose (``other``)
    and batching."""
    prim.multiple_results = True

    def evaluate(*args, **params):
        return _run(impl, args, **params)

    def abstract(*args, avals, levels, **params):
        del params
        if not levels:
            return list(avals)
        # every level's size from an operand it maps (their mapped axes lead, in order)
        sizes = []
        for j, axes in enumerate(levels):
            k = next(k for k, axis in enumerate(axes) if axis is not None)
            sizes.append(args[k].shape[sum(a[k] is not None for a in levels[:j])])
        return [jax.core.ShapedArray((*sizes, *a.shape), a.dtype) for a in avals]

    def jvp(primals, tangents, **params):
        tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
        return jax.jvp(lambda *a: _run(plain, a, **params), tuple(primals), tangents)

    def transpose(cts, *args, spec, trees, avals, levels):
        del avals
        res_tree, lin_tree, out_tree = trees
        n = res_tree.num_leaves
        # the linear operands' own types: without the axes of the levels that map them
        lin_avals = tuple(
            jax.core.ShapedArray(
                a.aval.shape[sum(axes[n + k] is not None for axes in levels) :], a.aval.dtype
            )
            if levels
            else a.aval
            for k, a in enumerate(args[n:])
        )
        if any(ad.is_undefined_primal(r) for r in args[:n]):
            raise NotImplementedError(f"{prim.name} is linear in its last operands only")
        cts = [ad.instantiate_zeros(c) for c in cts]
        # The outputs are mapped at every level; so are the transpose's results, summed
        # over the levels where the linear operand they belong to was not mapped.
        out = other.bind(
            *args[:n],
            *cts,
            spec=spec,
            trees=(res_tree, out_tree, lin_tree),
            avals=lin_avals,
            levels=tuple(axes[:n] + (0,) * len(cts) for axes in levels),
        )
        summed = []
        for k, o in enumerate(out):
            unmapped = tuple(j for j, axes in enumerate(levels) if axes[n + k] is None)
            summed.append(o.sum(axis=unmapped) if unmapped else o)
        return [None] * n + summed

    def batch(args, dims, *, levels, **params):
        args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
        axes = tuple(None if d is None else 0 for d in dims)
        out = prim.bind(*args, levels=(axes, *levels), **params)
        return out, [0] * len(out)

    prim.def_impl(evaluate)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(evaluate, multiple_results=True))
    ad.primitive_jvps[prim] = jvp
    ad.primitive_transposes[prim] = transpose
    batching.primitive_batchers[prim] = batch
