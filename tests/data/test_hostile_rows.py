"""A TSV whose image column holds hostile and broken files among good rows: an `on_bad_row: skip` run of the tiny
model counts each one, writes every good row and finishes, and its peak memory stays near a clean run's.  Runs
happen in child processes: before the fix some of these files crashed the process (OpenCV's JPEG 2000 reader)
or cost a gigabyte (a TIFF's tile buffer)."""
import base64
import json
import os
import subprocess
import sys
import textwrap

import crafted_images as crafted
import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "packages")

RUN = textwrap.dedent("""
    import json, resource, sys
    from ernievil2.infer.options import load_infer_config
    from ernievil2.infer.run import run_inference
    cfg = json.load(open(sys.argv[1], encoding="utf-8"))
    summary = run_inference(load_infer_config(None, list(cfg.items())))
    print(json.dumps({"rows": summary.read, "written": summary.written, "skipped": sum(summary.skipped.values()),
                      "log": summary.bad_row_log,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def hostile_images():
    """name -> encoded bytes; each must become a bad row."""
    ok, jp2 = cv2.imencode(".jp2", np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert ok
    jp2 = jp2.tobytes()
    tiles = [(256, 4, 1, 4), (257, 4, 1, 4), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
             (322, 4, 1, 16000), (323, 4, 1, 16000), (324, 4, 1, crafted.tiff_tail_offset(10)), (325, 4, 1, 64)]
    return {
        "GIF frame outside its 1x1 screen": crafted.gif(screen=(1, 1), frames=((0, 0, 13000, 13000),),
                                                        lzw=b"\x02\x01\x2c\x00", transparent=True),
        "GIF 1x1 frame at a far corner": crafted.gif(screen=(4, 4), frames=((65535, 65535, 1, 1),)),
        "GIF zero-size frame": crafted.gif(screen=(4, 4), frames=((0, 0, 0, 0),)),
        "GIF LZW code size 13": crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),), lzw=b"\x0d\x02\x44\x01\x00"),
        "TIFF duplicate size tags": crafted.tiff_duplicate_size_tags(small=(4, 4), large=(20000, 20000)),
        "TIFF 16000 x 16000 tiles": crafted.tiff(tiles, tail=b"\x01" * 64),
        "JP2 ihdr smaller than its codestream": crafted.jp2_patched(jp2, ihdr_size=(5, 4)),
        "JP2 truncated": jp2[:120],
        "JP2 decoy ihdr, huge codestream": crafted.jp2_patched(jp2, siz_size=(20000, 20000), decoy_ihdr=(1, 1)),
        "WebP canvas smaller than its bitstream": crafted.webp_vp8x((4, 4), (12000, 9000)),
        "JPEG with two frame headers": crafted.jpeg_two_frames((4, 4), (12000, 9000)),
        "PNG with a second IHDR": crafted.png_gray(4, 4, extra_ihdr=(30000, 30000)),
    }


def good_image(seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def write_tsv(path, images):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"text {i}\t{i}\t{base64.b64encode(data).decode('ascii')}\n" for i, data in enumerate(images))
    return str(path)


def run_in_child(tiny, tsv, out_name, **extra):
    cfg = {**tiny, "test_file": tsv, "output_file": os.path.join(os.path.dirname(tsv), out_name, "emb.out"),
           "on_bad_row": "skip", "engine": "eager", "infer_batch_size": 4, **extra}
    cfg_path = os.path.join(os.path.dirname(tsv), out_name + ".json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGES, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", RUN, cfg_path], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mixed_rows():
    """Good and hostile images interleaved; returns (images, line numbers of the hostile ones)."""
    hostile = list(hostile_images().values())
    images, bad_lines = [], []
    for i, data in enumerate(hostile):
        images.append(good_image(i))
        images.append(data)
        bad_lines.append(len(images))
    images.append(good_image(99))
    return images, bad_lines


def test_a_skip_run_counts_every_hostile_row_finishes_and_peaks_near_a_clean_run(tmp_path, tiny):
    """Each hostile file alone cost up to a gigabyte (or the process) before it was refused; now the run counts
    them, writes every good row, and its peak resident memory stays within 300 MB of a run of the good rows
    alone (the model and runtime dominate both)."""
    images, bad_lines = mixed_rows()
    good = [data for line, data in enumerate(images, 1) if line not in bad_lines]
    clean = run_in_child(tiny, write_tsv(tmp_path / "clean.tsv", good), "clean")
    hostile = run_in_child(tiny, write_tsv(tmp_path / "hostile.tsv", images), "hostile")
    assert clean["skipped"] == 0 and clean["written"] == len(good)
    assert hostile["rows"] == len(images)
    assert hostile["skipped"] == len(bad_lines) == len(hostile_images())
    assert hostile["written"] == len(good)
    with open(hostile["log"], encoding="utf-8") as f:
        assert [int(line.split(":")[1]) for line in f] == bad_lines
    print(f"peak resident memory: clean run {clean['peak_mb']:.0f} MB, hostile run {hostile['peak_mb']:.0f} MB")
    assert hostile["peak_mb"] - clean["peak_mb"] < 300, (clean, hostile)
