"""`srgan serve`: a JSON/HTTP API over the runtime's upscalers (FastAPI; `pip install 'srgan-cli[serve]'`).

Nothing here imports FastAPI at package import time: `serve.app.create_app` does, when called."""
