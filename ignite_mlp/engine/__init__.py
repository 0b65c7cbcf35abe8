"""The arithmetic of a training step: Ignite's supervised trainer and evaluator with their
metrics, the optimiser, and the precision they compute in. Knows no handlers and no run."""
