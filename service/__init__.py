"""Tessera's ways in: the ``tessera`` CLI, the BentoML HTTP service and batch jobs.

Each is a thin layer over the one predictor in :mod:`training`; nothing in ``training`` imports
from here.
"""
