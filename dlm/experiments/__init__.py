"""Experiments made of training and evaluation runs: a grid of configurations (study), a
hyperparameter search (sweep)."""
