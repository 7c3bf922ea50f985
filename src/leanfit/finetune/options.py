"""Allowed values of the fine-tuning options, light enough for the CLI parser to import."""

TASKS = ("causal-lm", "classification")
SCHEDULES = ("linear", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
