"""Build backends: the local Docker engine, and Kubernetes build pods."""
