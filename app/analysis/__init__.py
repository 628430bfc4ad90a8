"""Representation analysis: CKA maths (float64), minibatch CKA over a split, cached analyses, and their plots."""

from app.analysis.maths import cka as cka  # the Python API SPEC names: app.analysis.cka
