"""Move a PyTorch model's LSTM to JAX through its state_dict, and get the same outputs.

The PyTorch model is a small sequence tagger: an embedding, a two-layer bidirectional
LSTM with projections reading packed variable-length sentences, and a linear layer per
token. Its weights go to JAX through ``model.state_dict()``: the LSTM's entries (names
``lstm.weight_ih_l0``, ...) with :func:`jaxlstm.params_from_torch`, which reads the
configuration off the names and shapes, the other layers as plain arrays. The JAX
model then computes the same logits as PyTorch, and its LSTM weights go back into
PyTorch with :func:`jaxlstm.params_to_torch`.

Run it with::

    python -m pip install torch==2.13.0 -e ".[test]"   # or any PyTorch
    python docs/examples/port_from_pytorch.py          # --fast: the same (it is quick)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.nn.utils import rnn as torch_rnn

import jaxlstm as jl

TOLERANCE = 1e-5  # float32
VOCAB, EMBED, HIDDEN, PROJ, TAGS = 50, 16, 32, 12, 5


class TorchTagger(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM with projections -> per-token tag scores."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(
            EMBED, HIDDEN, num_layers=2, bidirectional=True, proj_size=PROJ, batch_first=True
        )
        self.out = nn.Linear(2 * PROJ, TAGS)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch_rnn.pack_padded_sequence(
            self.embed(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.lstm(packed)
        hidden, _ = torch_rnn.pad_packed_sequence(
            hidden, batch_first=True, total_length=tokens.shape[1]
        )
        return self.out(hidden)  # (N, L, TAGS)


def port(state_dict: dict[str, torch.Tensor]) -> dict:
    """The JAX model's parameters from the PyTorch model's ``state_dict``."""
    lstm_state = {
        k.removeprefix("lstm."): v for k, v in state_dict.items() if k.startswith("lstm.")
    }
    return {
        "embed": jnp.asarray(state_dict["embed.weight"].numpy()),  # (VOCAB, EMBED)
        "lstm": jl.params_from_torch(lstm_state),  # configuration read from names/shapes
        "out_w": jnp.asarray(state_dict["out.weight"].numpy()),  # (TAGS, 2*PROJ)
        "out_b": jnp.asarray(state_dict["out.bias"].numpy()),  # (TAGS,)
    }


@jax.jit
def jax_tagger(model: dict, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """The same forward in JAX: lengths instead of packing, same numbers."""
    hidden, _ = jl.lstm(
        model["lstm"], model["embed"][tokens], lengths=lengths, batch_first=True
    )  # (N, L, 2*PROJ), zero past each length
    return hidden @ model["out_w"].T + model["out_b"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="accepted for uniformity")
    parser.parse_args()

    torch.manual_seed(0)
    torch_model = TorchTagger().eval()
    rng = np.random.default_rng(0)
    lengths = np.array([9, 4, 12, 1, 7])  # any order
    tokens = rng.integers(0, VOCAB, (len(lengths), 12))  # (N, L), padded

    with torch.no_grad():
        expected = torch_model(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()

    model = port(torch_model.state_dict())
    logits = np.asarray(jax_tagger(model, jnp.asarray(tokens), jnp.asarray(lengths)))
    diff = float(np.abs(logits - expected).max())  # padding included: both give the bias
    print(f"PyTorch -> JAX, logits: max abs difference: {diff:.3g}")

    # And back: the JAX LSTM's weights load into PyTorch (here, after a change in JAX).
    model["lstm"] = jax.tree_util.tree_map(lambda w: w * 0.5, model["lstm"])
    torch_model.lstm.load_state_dict(
        {k: torch.from_numpy(v) for k, v in jl.params_to_torch(model["lstm"]).items()}
    )
    with torch.no_grad():
        expected_back = torch_model(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    logits_back = np.asarray(jax_tagger(model, jnp.asarray(tokens), jnp.asarray(lengths)))
    diff_back = float(np.abs(logits_back - expected_back).max())
    print(f"JAX -> PyTorch, logits: max abs difference: {diff_back:.3g}")

    worst = max(diff, diff_back)
    print(f"max abs difference: {worst:.3g}")
    if worst > TOLERANCE:
        raise SystemExit(f"JAX and PyTorch logits differ by {worst} > {TOLERANCE}")


if __name__ == "__main__":
    main()
