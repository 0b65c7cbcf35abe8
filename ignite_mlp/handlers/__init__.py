"""What is attached to the engines on Ignite events: validation, history, checkpoints, progress,
schedules and early stopping, the beginner's guardrails, TensorBoard, and the user's handlers."""
