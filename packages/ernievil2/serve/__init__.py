"""The HTTP search service (FastAPI + uvicorn) and its web page."""
