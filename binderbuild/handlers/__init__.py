"""Tornado handlers: they adapt requests and responses and do nothing else."""
