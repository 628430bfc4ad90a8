"""HTTP routes, one module per resource; the only package besides the app factory that imports FastAPI."""
