"""The closed loop: loop declarations, a challenger's data, retrain runs and their stages, workers, the scheduler."""
