"""Training jobs: records, the executors that run them (local processes, Ray), and the worker."""
