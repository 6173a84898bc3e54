"""The training library every step shares: arrays, runtime, two-phase fit, the activation cache,
cross-validation, the comparison's model zoo and probes. Steps call it; it never calls steps."""
