"""Process long sequences chunk by chunk, carrying the LSTM state between chunks.

A batch of long sequences, each with its own length, is run once in one call and once
in fixed-size chunks that pass ``(h, c)`` from one chunk to the next, as a stream
would arrive. The two give the same outputs and final states.

With per-sequence lengths, each chunk gets chunk-local lengths,
``clip(lengths - offset, 0, chunk)``: a sequence that ended in an earlier chunk has
length 0 in this one, which leaves its state untouched (``h_n, c_n = h_0, c_0``) and
its outputs zero, so its final state survives to the end. The last chunk is padded
to full size, so one compiled function serves every chunk.

Run it with::

    python docs/examples/streaming.py          # 4000 steps in chunks of 256
    python docs/examples/streaming.py --fast   # 600 steps in chunks of 128
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl

TOLERANCE = 1e-5  # float32


@jax.jit
def run_chunk(params, chunk, state, lengths, offset):
    """One chunk ``(C, N, H_in)`` starting at step ``offset``, from ``state``."""
    chunk_len = chunk.shape[0]
    local = jnp.clip(lengths - offset, 0, chunk_len)  # (N,) valid steps in this chunk
    return jl.lstm(params, chunk, state, lengths=local)


def stream(params, x, lengths, chunk_len):
    """Runs ``x (L, N, H_in)`` in chunks of ``chunk_len`` steps; same results as one call."""
    seq_len, batch, _ = x.shape
    num_chunks = -(-seq_len // chunk_len)
    pad = num_chunks * chunk_len - seq_len
    x = jnp.pad(x, ((0, pad), (0, 0), (0, 0)))  # (num_chunks * C, N, H_in)
    layers, hidden = len(params), params[0][0].w_hh.shape[1]
    state = (jnp.zeros((layers, batch, hidden)), jnp.zeros((layers, batch, hidden)))
    outputs = []
    for offset in range(0, seq_len, chunk_len):
        out, state = run_chunk(params, x[offset : offset + chunk_len], state, lengths, offset)
        outputs.append(out)
    return jnp.concatenate(outputs)[:seq_len], state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="a short stream (for the tests)")
    args = parser.parse_args()
    seq_len, chunk_len = (600, 128) if args.fast else (4000, 256)

    params = jl.init_params(jax.random.key(0), input_size=4, hidden_size=32, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (seq_len, 3, 4))  # (L, N, H_in)
    # A full-length sequence, one that ends mid-chunk, one that ends in the first chunk.
    lengths = jnp.array([seq_len, seq_len * 2 // 3 + 1, chunk_len // 2])

    whole, (h_whole, c_whole) = jax.jit(jl.lstm)(params, x, lengths=lengths)
    chunked, (h_chunked, c_chunked) = stream(params, x, lengths, chunk_len)

    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in ((chunked, whole), (h_chunked, h_whole), (c_chunked, c_whole))
    )
    chunks = -(-seq_len // chunk_len)
    print(
        f"{seq_len} steps, lengths {np.asarray(lengths).tolist()}, {chunks} chunks of {chunk_len}"
    )
    print(f"max abs difference: {diff:.3g}")
    if diff > TOLERANCE:
        raise SystemExit(f"chunked and one-shot results differ by {diff} > {TOLERANCE}")


if __name__ == "__main__":
    main()
