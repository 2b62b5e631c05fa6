"""`retrv serve`: warm engines behind an HTTP API and a web page of thumbnails.

- `service.py`: the engines (one per served index; encoders and the reasoner loaded once) and what a request may ask.
- `batching.py`: concurrent queries share encoder batches; the reasoner resolves one query at a time, queue bounded.
- `thumbnails.py`: small renditions of indexed images, cached beside the index by content hash.
- `app.py`: the Starlette routes; `guard.py`: host, token and body-size checks in front of them.
- `run.py`: binding rules and uvicorn; `client.py`: what `retrv search --server URL` sends (stdlib only).
- `static/`: the page (plain HTML, CSS and JavaScript).
"""
