"""Where OpenVINO's time goes: per tower and precision, the per-node timings of its profiler (PERF_COUNT) summed by
node type, after warm-up, and the share of layout changes and type conversions (Reorder + Convert).

    python benchmarks/profile_openvino.py EXPORT_DIR     # e.g. /tmp/bench_infer/exported (bench_infer.py writes it)

Images run in a batch of 8, a text as one 16-token query; int8 uses the first quantised models under
EXPORT_DIR/int8/ (run_infer.sh with precision int8 makes them)."""
import collections
import glob
import sys
import time

import numpy as np


def profile(core, path, hint, inputs, label, repeats):
    compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": "YES",
                                                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"})
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: inputs})
    per_type, calls, wall = collections.Counter(), collections.Counter(), []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: inputs})
        wall.append(time.perf_counter() - start)
        for node in request.profiling_info:
            if node.status == node.Status.EXECUTED:
                per_type[node.node_type] += node.real_time.total_seconds() * 1000 / repeats
                calls[node.node_type] += 1 / repeats
    total = sum(per_type.values())
    conversions = per_type["Reorder"] + per_type["Convert"]
    top = ", ".join(f"{k} {v:.1f} ms ({calls[k]:.0f})" for k, v in per_type.most_common(5))
    print(f"{label}: {np.median(wall) * 1000:.1f} ms per call; Reorder+Convert {conversions:.1f} ms "
          f"({100 * conversions / total:.1f}%); top node types (executions): {top}", flush=True)


def main(export_dir):
    import openvino as ov
    core = ov.Core()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    query = rng.integers(5, 30000, (1, 16)).astype(np.int64)
    query[:, 0], query[:, -1] = 1, 2
    for hint in ("f32", "bf16"):
        profile(core, f"{export_dir}/image/model.onnx", hint, images, f"image x8 {hint}", 5)
        profile(core, f"{export_dir}/text/model.onnx", hint, query, f"text 1x16 {hint}", 20)
    quantised = sorted(glob.glob(f"{export_dir}/int8/*/"))
    if quantised:
        profile(core, quantised[0] + "image.xml", "bf16", images, "image x8 int8", 5)
        profile(core, quantised[0] + "text.xml", "bf16", query, "text 1x16 int8", 20)


if __name__ == "__main__":
    main(sys.argv[1])
