"""Classify handwritten digits with an LSTM that reads each image row by row.

scikit-learn's digits (1797 images of 8x8 pixels, shipped with the package: no
download) become sequences of 8 steps (the rows) of 8 features (the pixels). A
one-layer LSTM reads them; a linear head on its final hidden state gives the 10 class
scores. Training uses optax's Adam on minibatches, with one jitted step.

Run it with::

    python -m pip install -e ".[examples]"
    python docs/examples/train_digits.py           # full run, test accuracy >= 0.95
    python docs/examples/train_digits.py --fast    # a few epochs, for the tests

The last line printed is ``test accuracy: 0.xxx``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import jaxlstm as jl

HIDDEN = 64
BATCH = 64
LEARNING_RATE = 1e-2


def load_data(seed: int) -> tuple[np.ndarray, ...]:
    """Train and test splits: images ``(n, 8, 8)`` scaled to [0, 1], labels ``(n,)``."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (n, 8 rows, 8 pixels)
    return train_test_split(
        images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def init_model(key: jax.Array) -> dict:
    lstm_key, head_key = jax.random.split(key)
    bound = 1.0 / HIDDEN**0.5
    return {
        "lstm": jl.init_params(lstm_key, input_size=8, hidden_size=HIDDEN),
        "head": {
            "w": jax.random.uniform(head_key, (HIDDEN, 10), minval=-bound, maxval=bound),
            "b": jnp.zeros(10),
        },
    }


def logits(model: dict, images: jax.Array) -> jax.Array:
    """``images (N, 8, 8)`` -> class scores ``(N, 10)``: rows are the time steps."""
    _, (h_n, _) = jl.lstm(model["lstm"], images, batch_first=True)  # h_n (1, N, H)
    return h_n[-1] @ model["head"]["w"] + model["head"]["b"]


def loss_fn(model: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits(model, images), labels).mean()


optimizer = optax.adam(LEARNING_RATE)


@jax.jit
def train_step(model, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(model, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, model)
    return optax.apply_updates(model, updates), opt_state, loss


@jax.jit
def accuracy(model, images, labels):
    return jnp.mean(jnp.argmax(logits(model, images), axis=-1) == labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="train briefly (for the tests)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 40, or 4 with --fast")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = args.epochs or (4 if args.fast else 40)

    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = init_model(jax.random.key(args.seed))
    opt_state = optimizer.init(model)
    rng = np.random.default_rng(args.seed)
    steps = len(x_train) // BATCH  # drop the last partial batch: one compiled shape

    with tqdm(range(epochs), desc="training", unit="epoch") as bar:
        for _ in bar:
            order = rng.permutation(len(x_train))
            for i in range(steps):
                idx = order[i * BATCH : (i + 1) * BATCH]
                model, opt_state, loss = train_step(model, opt_state, x_train[idx], y_train[idx])
            bar.set_postfix(loss=f"{float(loss):.4f}")

    elapsed = time.perf_counter() - start
    print(
        f"{len(x_train)} training and {len(x_test)} test images, {epochs} epochs, {elapsed:.1f} s"
    )
    print(f"test accuracy: {float(accuracy(model, x_test, y_test)):.3f}")


if __name__ == "__main__":
    main()
