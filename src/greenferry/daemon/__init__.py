"""The node daemon: lifecycle, event bus, signal handling, telemetry, power measurement, HTTP endpoint."""
