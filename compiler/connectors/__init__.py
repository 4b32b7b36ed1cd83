"""Connectors: the `Transport` interface (run, put, get) with its local-directory and SSH
(fabric) implementations, and the path confinement every local writer uses. A leaf: imports
no stage."""
