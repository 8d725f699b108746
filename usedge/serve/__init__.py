"""`usedge serve`: a local web page and HTTP API around the runtime Classifier (no torch).

Needs the `serve` extra (fastapi, uvicorn, python-multipart, prometheus-client); import
`usedge.serve.app` only where those are wanted, so the base install never pays for them.
"""
