"""The benchmark problems: :class:`Config`, the named ones, the suites, custom specs."""

from __future__ import annotations

import dataclasses

import numpy as np

PASSES = ("forward", "forward+backward")
"""The timed passes; ``forward+backward`` also computes the weight and input gradients."""

SEED = 0
"""The seed of every random draw: weights, inputs, lengths."""

_BACKWARD_FLOP_FACTOR = {"forward": 1, "forward+backward": 3}


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark problem, in PyTorch's shape letters.

    Attributes:
        name: what the table and ``--configs`` call it.
        seq_len: ``T`` (``L``), the padded sequence length.
        batch: ``N``.
        input_size: ``I`` (``H_in``).
        hidden_size: ``H``.
        num_layers: stacked layers.
        bidirectional: whether each layer also runs in reverse (``D = 2``).
        varlen: whether sequences have their own lengths, drawn in ``[T // 10, T]``
            (at least 1) with a fixed seed.
        reps: default timed repetitions (``--reps`` overrides), sized so that the
            default CPU suite takes about two minutes on two CPU cores.
    """

    name: str
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    varlen: bool = False
    reps: int = 10

    @property
    def num_directions(self) -> int:
        """``D``: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def shape(self) -> str:
        """The sizes and options in words, e.g. ``T=100 N=32 I=128 H=256 layers=2 bidir``."""
        words = [
            f"T={self.seq_len}",
            f"N={self.batch}",
            f"I={self.input_size}",
            f"H={self.hidden_size}",
        ]
        if self.num_layers > 1:
            words.append(f"layers={self.num_layers}")
        if self.bidirectional:
            words.append("bidir")
        if self.varlen:
            words.append(f"lengths {self._min_length}..{self.seq_len}")
        return " ".join(words)

    def lengths(self) -> np.ndarray | None:
        """The per-sequence lengths ``(N,)`` int32 (fixed seed), or None when not varlen."""
        if not self.varlen:
            return None
        rng = np.random.default_rng(SEED)
        return rng.integers(self._min_length, self.seq_len + 1, self.batch).astype(np.int32)

    @property
    def _min_length(self) -> int:
        return max(1, self.seq_len // 10)

    def flops(self, pass_name: str) -> float:
        """Matmul FLOPs of one ``pass_name`` (see the package docstring for the count)."""
        lengths = self.lengths()
        steps = self.seq_len * self.batch if lengths is None else int(lengths.sum())
        gates = 4 * self.hidden_size
        per_step = 0
        for layer in range(self.num_layers):
            h_in = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            per_step += self.num_directions * 2 * gates * (h_in + self.hidden_size)
        return float(steps * per_step * _BACKWARD_FLOP_FACTOR[pass_name])


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("typical", 100, 32, 128, 256, reps=10),
        Config("small", 50, 1, 32, 64, reps=20),
        Config("long", 1000, 8, 64, 128, reps=5),
        Config("big", 200, 64, 512, 512, reps=3),
        Config("bidir2", 100, 32, 128, 256, num_layers=2, bidirectional=True, reps=3),
        Config("varlen", 100, 32, 128, 256, varlen=True, reps=5),
        Config("large", 512, 256, 1024, 1024, reps=10),
    )
}
"""The named configurations. ``large`` fills a data-centre GPU (an H200) and is in the
GPU suite only; each of the others takes a few seconds or less on two CPU cores."""

SUITES: dict[str, tuple[str, ...]] = {
    "cpu": ("typical", "small", "long", "big", "bidir2", "varlen"),
    "gpu": ("typical", "small", "long", "big", "bidir2", "varlen", "large"),
}
"""The default configurations by device kind (``--device``), in the report's order."""

QUICK = ("typical",)
"""The configurations of ``--quick``, on any device."""


def default_configs(device_kind: str, *, quick: bool) -> list[Config]:
    """The configurations run when ``--configs`` is not given.

    Args:
        device_kind: ``"cpu"`` or ``"gpu"``, a key of :data:`SUITES`.
        quick: ``--quick``: :data:`QUICK` only.

    Example:
        >>> [c.name for c in default_configs("gpu", quick=False)][-1]
        'large'
    """
    return [CONFIGS[name] for name in (QUICK if quick else SUITES[device_kind])]


def parse_config(spec: str) -> Config:
    """A named config, or a custom one written ``T:N:I:H[:layers][:bidir][:varlen]``.

    Args:
        spec: a key of :data:`CONFIGS`, or e.g. ``"20:4:8:16:2:bidir"``.

    Raises:
        ValueError: if ``spec`` is neither.

    Example:
        >>> parse_config("20:4:8:16:2:bidir").shape
        'T=20 N=4 I=8 H=16 layers=2 bidir'
    """
    if spec in CONFIGS:
        return CONFIGS[spec]
    parts = spec.split(":")
    options = parts[4:]
    flags = {"bidir", "varlen"}
    layers = [p for p in options if p not in flags]
    try:
        if len(parts) < 4 or len(layers) > 1 or len(set(options)) != len(options):
            raise ValueError
        sizes = [int(p) for p in parts[:4] + layers]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"unknown config {spec!r}: choose from {', '.join(CONFIGS)}, or give "
            "T:N:I:H[:layers][:bidir][:varlen] with positive integers, e.g. 20:4:8:16:2:bidir"
        ) from None
    return Config(
        spec,
        *sizes[:4],
        num_layers=sizes[4] if layers else 1,
        bidirectional="bidir" in options,
        varlen="varlen" in options,
    )
