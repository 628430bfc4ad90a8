"""Sweeps: a family of training jobs (trials) expanded from one request, studied together, cut short by ASHA."""
