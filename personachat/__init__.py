"""A chat service with AI personas and session memory (FastAPI + Redis + any OpenAI-compatible model)."""

__version__ = "0.1.0"
