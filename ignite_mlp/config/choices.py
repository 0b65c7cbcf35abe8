"""The names each option accepts, importable without torch (the CLI's ``--help`` builds from them).

The modules that implement the choices (``model``, ``augment``, ``engine``) import them from here.
"""

NORMS = ("none", "batch", "layer")
ACTIVATIONS = ("relu", "gelu")
AUGMENTS = ("none", "flip", "crop", "flip+crop")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("none", "step", "cosine", "onecycle")
STOP_METRICS = ("val_loss", "val_acc")
BACKENDS = ("auto", "gloo", "nccl")
PROGRESS_MODES = ("auto", "on", "off")
WHITENINGS = ("none", "zca")
OPTIMIZERS = ("sgd", "adamw")
