"""Policies: ways to spend less compute per timestep (see policies/base.py)."""
