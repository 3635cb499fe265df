"""binderbuild: build-and-launch service for reproducible notebooks.

A drop-in replacement for BinderHub: same URLs, same event protocol.
"""

__version__ = "0.1.0"
