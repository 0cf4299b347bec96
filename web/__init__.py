"""The HTTP service: Litestar app, REST API and browser UI."""
