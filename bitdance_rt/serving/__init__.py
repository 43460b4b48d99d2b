"""The HTTP server (``bitdance-rt serve``): OpenAI-style images API, progress events, metrics, web page."""
