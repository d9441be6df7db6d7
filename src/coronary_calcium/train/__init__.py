"""Train: the pieces the bundle's trainer and evaluator wire in (precision, checkpoints, metrics, reports)."""
