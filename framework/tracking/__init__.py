"""Recording runs and sweeps in MLflow, through its public API only."""
