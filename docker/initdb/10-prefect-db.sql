-- The Prefect server and the Optuna studies keep their state in their own databases next to MLflow's.
CREATE DATABASE prefect;
CREATE DATABASE optuna;
