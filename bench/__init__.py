"""Benchmarks: each prints ratios measured side by side in one run.

``python -m bench`` runs them all (each in a process of its own, see ``suite``) and ends
with one table of the ratios (``report``); ``--json`` prints them as one object.
"""
