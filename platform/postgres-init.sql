-- Run once by the postgres image on an empty volume: MLflow's database beside tuneloop's own.
CREATE DATABASE mlflow OWNER tuneloop;
