"""Trace-driven simulator: drives core/ policies with a virtual clock over recorded traces."""
