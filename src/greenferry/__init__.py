"""greenferry: AI training jobs that follow surplus renewable energy across micro-datacenters."""

__version__ = "0.1.0"
