"""The network: ViT image tower, ERNIE 3.0 text tower, the dual encoder, their configs, and weights I/O in the
official key layout.  (`configs` imports no Paddle.)"""
