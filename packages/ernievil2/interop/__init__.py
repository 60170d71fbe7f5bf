"""Other homes of the same weights and towers: PaddleNLP's key layout, safetensors files, and the towers
exported for Paddle Inference (and ONNX).  Takes a model as an argument; never imports `infer` or `train`."""
