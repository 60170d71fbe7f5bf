"""Evaluation: Recall@K / MRR of text <-> image retrieval, and the embedding files it reads (the official
3-column text format and our .npz sidecar).  numpy only, never Paddle."""
