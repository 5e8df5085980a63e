"""The benchmark suite (issue 7): ``python -m bench`` runs it; see bench/run.py."""
