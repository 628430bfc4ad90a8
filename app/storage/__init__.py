"""Object storage: the S3 seam (the only importer of minio), the embedded SeaweedFS server, the key layout."""
