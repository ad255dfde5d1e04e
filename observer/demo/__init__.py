"""``observer demo``: the whole loop on a synthetic support agent instrumented with the real
OpenTelemetry SDK."""
