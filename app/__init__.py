"""SCV Trainer: a FastAPI service that trains Sequential CNNs and keeps versioned models in S3."""
