"""Serving: any model behind an OpenAI-compatible endpoint (`charter serve`) or a terminal chat
(`charter chat`), guarded by the constitution's classifier on the way in and on the way out.

guard.py     the input/output guard and its audit log (no HTTP; unit-tested on a keyword scorer)
engines.py   local models and upstream servers as async token streams
hf_stream.py token streaming for transformers models, continuously batched
pipeline.py  one guarded completion as events
app.py       the FastAPI app and server-sent events
chat.py      the terminal chat

Nothing heavy is imported here: FastAPI, uvicorn, httpx and torch load only when a server or chat starts.
"""
