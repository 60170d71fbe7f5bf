"""Search over embedded galleries: build an index (faiss or Milvus) and query it with text or an image."""
