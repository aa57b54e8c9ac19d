"""Algorithms: each is a model pairing plus a loss recipe, run by `base.run_training`."""

from distil.algorithms.base import Algorithm, RunConfig, run_training
from distil.algorithms.teacher import Teacher

ALGORITHMS = {algorithm.name: algorithm for algorithm in (Teacher,)}

__all__ = ["ALGORITHMS", "Algorithm", "RunConfig", "run_training"]
