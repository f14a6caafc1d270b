"""`srgan serve`: a web page and a JSON/HTTP API over the runtime's upscalers (FastAPI + uvicorn).

Nothing here imports FastAPI at package import time: `serve.app.create_app` does, when called."""
