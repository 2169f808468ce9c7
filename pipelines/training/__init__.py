"""Training: recipes in, a registered adapter out. `run.train(recipe)` is the entry point."""
