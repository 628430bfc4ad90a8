"""The model registry: publishing, listing, downloads, deletion and expiry of stored models, and inference with them."""
