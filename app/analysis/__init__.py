"""Representation analysis: CKA maths (float64), the cached per-model analyses, and their plots."""

from app.analysis.maths import cka as cka  # the Python API SPEC names: app.analysis.cka
