"""The model registry: listing, downloads, deletion and expiry of stored models, and inference with them."""
