"""What the tests and the benchmarks share: servers, data writers, stored rows and wait helpers; no pytest."""
