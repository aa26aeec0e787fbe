"""The only place third-party I/O libraries are imported: MQTT, InfluxDB, NVML, RAPL, HTTP, systemd."""
