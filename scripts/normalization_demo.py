"""Why normalise inputs? The tutorial's demonstration, runnable.

    python scripts/normalization_demo.py

One linear neuron sees the inputs [1, 1, 255]. The gradient of a weight is proportional to its
input, so one SGD step moves the third weight 255 times more than the others: with raw pixel
values, one input dominates and the learning rate that suits it is far too small for the rest.
After normalising the inputs to a common scale, every weight moves by a similar amount.
"""

from __future__ import annotations

import torch


def weight_updates(x: torch.Tensor, lr: float = 1e-3) -> torch.Tensor:
    """How much one SGD step on a squared error moves each weight of a neuron that starts at 0."""
    weight = torch.zeros(3, requires_grad=True)
    loss = (weight @ x - 1.0) ** 2  # target 1.0
    loss.backward()
    with torch.no_grad():
        return (-lr * weight.grad).abs()


def main() -> None:
    raw = torch.tensor([1.0, 1.0, 255.0])
    # Normalisation brings every input to a common scale, like the tutorial's Normalize; here
    # each input is divided by its own range (255 for the pixel, 1 for the others).
    normalised = raw / torch.tensor([1.0, 1.0, 255.0])
    for name, x in (("raw inputs [1, 1, 255]", raw), ("normalised inputs", normalised)):
        moves = weight_updates(x)
        ratio = (moves.max() / moves.min()).item()
        print(f"{name:24s} weight changes {[f'{m:.2e}' for m in moves.tolist()]}  largest/smallest = {ratio:.1f}")


if __name__ == "__main__":
    main()
