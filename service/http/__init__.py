"""The HTTP API: the BentoML service, uploads, responses and jobs."""
