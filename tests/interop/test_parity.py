"""An independent parity check beyond the golden file: another checkpoint seed and other images, through
`bash run_infer.sh` with the default engine, against PaddleNLP's own ErnieViLModel (an independent
implementation of the same network, which maps onto the official checkpoint without loss)."""
import base64
import os
import subprocess
import sys

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import REFERENCE, REPO, need_shared
from ernievil2.data.images import decode_base64_image
from ernievil2.data.tokenizer import ErnieTokenizer
from ernievil2.data.transforms import preprocess_eval
from ernievil2.interop.convert import read_state
from ernievil2.interop.layouts import to_paddlenlp

TEXTS = ["一辆红色的公交车停在路边", "Two dogs play with a frisbee on the grass.", "夜景：城市里的高楼和灯光🌃",
         "ＡＢＣ全角字符与English混排", "一个人", "厨房里有冰箱、微波炉和很多碗碟，桌子上还放着三个苹果和两根香蕉，"
         "窗外阳光明媚，远处可以看到几棵高大的树和一片蓝色的天空，整个画面显得温馨而宁静"]


def photo_like(seed, width, height, gray=False):
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(8):
        cv2.rectangle(img, tuple(int(v) for v in rng.integers(0, min(width, height), 2)),
                      tuple(int(v) for v in rng.integers(0, min(width, height), 2)),
                      [int(c) for c in rng.integers(0, 255, 3)], -1)
    img = cv2.GaussianBlur(img, (5, 5), 1.5)
    if gray:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    ext = ".png" if seed % 2 else ".jpg"
    return base64.b64encode(cv2.imencode(ext, img)[1].tobytes()).decode()


def test_seed_11_checkpoint_and_new_images_match_paddlenlps_ernievil(tmp_path, vocab_path):
    paddlenlp = pytest.importorskip("paddlenlp.transformers")
    script = need_shared(os.path.join(REFERENCE, "make_reference_checkpoint.py"))
    weights = tmp_path / "ref11.pdparams"
    subprocess.run([sys.executable, script, "--seed", "11", "--out", str(weights)], check=True,
                   stdout=subprocess.DEVNULL)
    sizes = [(320, 240), (200, 500), (224, 224), (31, 17), (640, 360), (300, 300)]
    rows = [(text, f"img{i % 5}", photo_like(i % 5, *sizes[i % 5], gray=i == 3)) for i, text in enumerate(TEXTS)]
    tsv = tmp_path / "other.tsv"
    tsv.write_text("".join(f"{t}\t{i}\t{b}\n" for t, i, b in rows), encoding="utf-8")
    out = tmp_path / "emb.out"
    proc = subprocess.run(["bash", "run_infer.sh", "cpu", "packages/configs/ernie_vil_base.yaml",
                           "-o", f"test_file={tsv}", "-o", f"init_from_params={weights}", "-o", f"output_file={out}",
                           "-o", f"vocab_file={vocab_path}", "-o", "progress=false", "-o", "infer_batch_size=4"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = [line.rstrip("\n").split("\t") for line in open(out, encoding="utf-8")]
    our_text = np.array([[float(x) for x in r[0].split()] for r in ours])
    our_image = np.array([[float(x) for x in r[1].split()] for r in ours])

    model = paddlenlp.ErnieViLModel(paddlenlp.ErnieViLConfig())
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in to_paddlenlp(read_state(str(weights))).items()})
    model.eval()
    tokenizer = ErnieTokenizer.from_file(vocab_path)
    ids = tokenizer.batch_encode([t for t, _, _ in rows], max_len=48)
    pixels = np.stack([preprocess_eval(decode_base64_image(b)) for _, _, b in rows])
    with paddle.no_grad():
        ref_text = F.normalize(model.get_text_features(input_ids=paddle.to_tensor(ids)), axis=-1).numpy()
        ref_image = F.normalize(model.get_image_features(pixel_values=paddle.to_tensor(pixels)), axis=-1).numpy()
    assert (our_text * ref_text).sum(1).min() >= 0.99999
    assert (our_image * ref_image).sum(1).min() >= 0.99999
    # The embeddings differ from row to row, so agreement is not an accident of a degenerate model.
    assert (ref_text @ ref_text.T)[np.triu_indices(len(rows), 1)].max() < 0.99
