"""Inference: typed options, the streaming pipeline (worker processes decode and tokenise; they never import
Paddle), engines (eager Paddle, Paddle Inference) and run_infer.sh's file outputs."""
