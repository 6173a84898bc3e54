-- The Prefect server keeps its state in its own database next to MLflow's.
CREATE DATABASE prefect;
