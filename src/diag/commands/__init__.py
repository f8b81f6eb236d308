"""One module per ``diag`` sub-command; each defines ``register(subparsers)``."""
