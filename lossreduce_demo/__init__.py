"""lossreduce_demo: how per-token losses are reduced to one number, and what that changes."""

__version__ = "0.1.0"
