"""run_infer.sh: golden parity with the official release, the official YAML, overrides, bad input under both
policies, de-duplication and order, padding per batch, missing files."""
import base64
import os
import subprocess

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO, VOCAB, make_tiny_model
from ernievil2.errors import BadRowError, InputError
from ernievil2.eval.embedding_files import load_embeddings
from ernievil2.infer.engines import EagerEncoder
from ernievil2.infer.options import load_infer_config
from ernievil2.infer.run import run_inference

# The official ernie_vil_base.yaml, key for key.
OFFICIAL_YAML = {"input_dtype": "int64", "device": "gpu", "infer_batch_size": 10, "max_text_seqlen": 48,
                 "vocab_file": "./packages/ernie_base_3.0/vocab.txt",
                 "text_model_config": "./packages/ernie_base_3.0/ernie_config.base.json",
                 "test_file": "./packages/coco/your_data_path",
                 "output_file": "./test_out/cross_modal_embeddings.out",
                 "init_from_params": "./params/your_model_weights_path",
                 "pad_token": 0, "cls_token": 1, "sep_token": 2, "mask_token": 3, "unk_token": 17963}


def run_infer_sh(args, timeout=600):
    return subprocess.run(["bash", os.path.join(REPO, "run_infer.sh"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def read_out(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]
    text = np.array([[float(x) for x in r[0].split()] for r in rows])
    image = np.array([[float(x) for x in r[1].split()] for r in rows])
    return text, image, [r[2] for r in rows]


def test_golden_parity_through_run_infer_with_the_official_yaml(tmp_path, reference_checkpoint, golden_dir,
                                                                 vocab_path):
    config = tmp_path / "official.yaml"
    config.write_text(yaml.safe_dump(OFFICIAL_YAML), encoding="utf-8")
    out = tmp_path / "out" / "emb.out"
    proc = run_infer_sh(["cpu", str(config), "-o", f"test_file={golden_dir}/golden.coco.tsv",
                         "-o", f"init_from_params={reference_checkpoint}", "-o", f"output_file={out}",
                         "-o", f"vocab_file={vocab_path}", "-o", "progress=false", "-o", "engine=eager"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows read: 16, written: 16, skipped: 0" in proc.stdout
    assert "distinct images encoded: 15" in proc.stdout  # rows 9 and 10 share one image
    text, image, ids = read_out(out)
    ref_text, ref_image, _ = read_out(os.path.join(golden_dir, "official_embeddings.out"))
    assert text.shape == ref_text.shape == (16, 768)
    assert (text * ref_text).sum(1).min() >= 0.99999
    assert (image * ref_image).sum(1).min() >= 0.99999
    tsv_ids = [line.split("\t")[1] for line in open(os.path.join(golden_dir, "golden.coco.tsv"), encoding="utf-8")]
    assert ids == tsv_ids
    side_text, side_image, side_ids = load_embeddings(str(out.with_suffix(".npz")))
    np.testing.assert_allclose(side_text, text, atol=1e-7)
    np.testing.assert_allclose(side_image, image, atol=1e-7)
    assert list(side_ids) == ids
    # The sidecar certifies the text file it was written with, so eval_retri.py may read it instead.
    from ernievil2.eval.sidecar import matching_sidecar
    assert matching_sidecar(str(out)) == str(out.with_suffix(".npz"))


# ------------------------------------------------------------------------------------- tiny-model tests

def jpeg_b64(seed, size=(40, 30), gray=False):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if gray:
        img = img[:, :, 0]
    return base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()


def config_for(tiny, test_file, **extra):
    values = {**tiny, "test_file": str(test_file), **extra}
    return load_infer_config(None, list(values.items()))


class CountingEncoder(EagerEncoder):
    def __init__(self, model):
        super().__init__(model)
        self.images = 0
        self.text_shapes = []

    def encode_image(self, pixels):
        self.images += len(pixels)
        return super().encode_image(pixels)

    def encode_text(self, ids):
        self.text_shapes.append(ids.shape)
        return super().encode_text(ids)


def write_tsv(path, rows):
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else row.encode("utf-8"))
            f.write(b"\n")
    return path


def test_each_distinct_image_is_encoded_once_and_rows_keep_their_order(tmp_path, tiny):
    a, b, c = jpeg_b64(1), jpeg_b64(2), jpeg_b64(3, gray=True)
    rows = [f"红色的圆\t1\t{a}", f"蓝色\t2\t{b}", f"一只猫\t1\t{a}", f"same id other bytes\t1\t{c}",
            f"第五\t2\t{b}", "", f"六\t3\t{c}\t红色,圆形", f"七 a much longer caption with many words\t1\t{a}"]
    tsv = write_tsv(tmp_path / "in.tsv", rows)
    encoder = CountingEncoder(make_tiny_model(seed=5))
    summary = run_inference(config_for(tiny, tsv, infer_batch_size=3), encoder=encoder)
    assert summary.read == 7 and summary.written == 7
    assert encoder.images == 4  # (1,a) (2,b) (1,c) (3,c): same id *and* bytes is one image
    assert summary.counts["images_encoded"] == 4 and summary.written - summary.counts["images_encoded"] == 3
    text, image, ids = read_out(tiny["output_file"])
    assert ids == ["1", "2", "1", "1", "2", "3", "1"]
    np.testing.assert_array_equal(image[0], image[2])
    np.testing.assert_array_equal(image[0], image[6])
    assert not np.allclose(image[0], image[3])
    # Texts are padded per batch to the longest text of that batch, not to max_text_seqlen.
    assert [s[1] for s in encoder.text_shapes][0] < 48 and len({s[1] for s in encoder.text_shapes}) > 1
    # Same numbers as encoding each row alone.
    single = CountingEncoder(make_tiny_model(seed=5))
    run_inference(config_for(tiny, tsv, infer_batch_size=1, output_file=str(tmp_path / "single.out")),
                  encoder=single)
    text1, image1, _ = read_out(tmp_path / "single.out")
    np.testing.assert_allclose(text1, text, atol=2e-6)
    np.testing.assert_allclose(image1, image, atol=2e-6)


def test_texts_are_batched_by_length_and_rows_still_come_out_in_input_order(tmp_path, tiny):
    from ernievil2.data.tokenizer import ErnieTokenizer
    a, b = jpeg_b64(1), jpeg_b64(2)
    captions = [("一只猫" if i % 2 else f"第{i}个 a much longer caption with quite a few more words in it")
                for i in range(9)]
    tsv = write_tsv(tmp_path / "in.tsv", [f"{c}\t{i % 2}\t{(a, b)[i % 2]}" for i, c in enumerate(captions)])
    lengths = (ErnieTokenizer.from_file(VOCAB).batch_encode(captions, max_len=48) != 0).sum(1)
    sorted_lengths = np.sort(lengths, kind="stable")
    in_order, by_length = CountingEncoder(make_tiny_model(seed=5)), CountingEncoder(make_tiny_model(seed=5))
    run_inference(config_for(tiny, tsv, infer_batch_size=2, text_sort_window=1,
                             output_file=str(tmp_path / "in_order.out")), encoder=in_order)
    run_inference(config_for(tiny, tsv, infer_batch_size=2), encoder=by_length)
    # Input order: each batch of 2 rows pads to its long caption.  Sorted: batches of similar lengths.
    assert in_order.text_shapes == [(len(lengths[i:i + 2]), lengths[i:i + 2].max()) for i in range(0, 9, 2)]
    assert by_length.text_shapes == [(len(sorted_lengths[i:i + 2]), sorted_lengths[i:i + 2].max())
                                     for i in range(0, 9, 2)]
    assert sum(n * w for n, w in by_length.text_shapes) < sum(n * w for n, w in in_order.text_shapes)
    text1, image1, ids1 = read_out(tmp_path / "in_order.out")
    text2, image2, ids2 = read_out(tiny["output_file"])
    assert ids1 == ids2 == [str(i % 2) for i in range(9)]
    np.testing.assert_allclose(text2, text1, atol=2e-6)
    np.testing.assert_array_equal(image2, image1)


def test_a_small_image_cache_with_a_long_text_window_keeps_every_row_correct(tmp_path, tiny):
    images = [jpeg_b64(k) for k in range(12)]  # more than the image LRU holds without the window's share
    rows = [f"caption {i} {'long ' * (i % 5)}\t{i % 12}\t{images[i % 12]}" for i in range(40)]
    tsv = write_tsv(tmp_path / "in.tsv", rows)
    small = CountingEncoder(make_tiny_model(seed=5))
    run_inference(config_for(tiny, tsv, infer_batch_size=3, image_cache_size=1, prefetch_batches=1,
                             text_sort_window=50), encoder=small)
    run_inference(config_for(tiny, tsv, infer_batch_size=3, output_file=str(tmp_path / "big.out")),
                  encoder=CountingEncoder(make_tiny_model(seed=5)))
    assert small.images > 12  # images the planner forgot were encoded again; every row still got its own
    got, want = read_out(tiny["output_file"]), read_out(tmp_path / "big.out")
    assert got[2] == want[2] == [str(i % 12) for i in range(40)]
    np.testing.assert_allclose(got[0], want[0], atol=2e-6)
    np.testing.assert_allclose(got[1], want[1], atol=2e-6)


def test_the_cpu_predictor_gets_the_batch_and_text_length_of_the_config(tmp_path, tiny):
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import engine_options
    from ernievil2.infer.predictor import PredictorEncoder
    cfg = config_for(tiny, tmp_path / "unused.tsv", engine="paddle_inference", infer_batch_size=7,
                     max_text_seqlen=40)
    encoder = make_encoder(engine_options(cfg))
    assert isinstance(encoder, PredictorEncoder) and encoder.fixed_shapes
    assert (encoder.text_batch, encoder.text_longest) == (7, 40)


BAD_ROWS = {  # expected phrase of the message -> the row
    "tab-separated columns": "only two\tcolumns",
    "base64": "文本\t9\t@@@notbase64@@@",
    "not an image": f"文本\t9\t{base64.b64encode(b'just some bytes, not a picture').decode()}",
    "empty text": f" \t9\t{jpeg_b64(9)}",
    "not valid UTF-8": b"\xff\xfe broken\t9\t" + jpeg_b64(9).encode(),
    "over the limit": f"big\t9\t{jpeg_b64(10, size=(300, 300))}",
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_rows_stop_with_file_and_line_and_leave_no_output(tmp_path, tiny, kind):
    good = f"好的\t1\t{jpeg_b64(1)}"
    tsv = write_tsv(tmp_path / "in.tsv", [good, good, BAD_ROWS[kind], good])
    cfg = config_for(tiny, tsv, max_image_pixels=50_000)
    with pytest.raises(BadRowError) as err:
        run_inference(cfg, encoder=EagerEncoder(make_tiny_model(seed=5)))
    assert str(err.value).startswith(f"{tsv}:3: ")
    assert kind in str(err.value)
    out_dir = os.path.dirname(tiny["output_file"])
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == []


def test_skip_policy_writes_every_good_row_and_reports_each_skipped_line(tmp_path, tiny):
    good = [f"good {i}\t{i}\t{jpeg_b64(i)}" for i in range(3)]
    bad = list(BAD_ROWS.values())
    rows = [good[0], *bad[:3], good[1], *bad[3:], good[2], f"again\t9\t{jpeg_b64(10, size=(300, 300))}"]
    tsv = write_tsv(tmp_path / "in.tsv", rows)
    summary = run_inference(config_for(tiny, tsv, on_bad_row="skip", max_image_pixels=50_000, infer_batch_size=4),
                            encoder=EagerEncoder(make_tiny_model(seed=5)))
    assert summary.written == 3 and summary.read == len(rows)
    assert sum(summary.skipped.values()) == len(bad) + 1
    _, _, ids = read_out(tiny["output_file"])
    assert ids == ["0", "1", "2"]
    log = open(summary.bad_row_log, encoding="utf-8").read().splitlines()
    assert [line.split(":")[1] for line in log] == ["2", "3", "4", "6", "7", "8", "10"]
    assert "first seen at line 8" in log[-1]  # the repeated bomb is reported against its first occurrence


def test_run_infer_sh_cli_overrides_errors_and_gpu_fallback(tmp_path, tiny):
    tsv = write_tsv(tmp_path / "in.tsv", [f"文本\t1\t{jpeg_b64(1)}", f"text\t2\t{jpeg_b64(2)}"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "test_file": str(tsv)}, allow_unicode=True), encoding="utf-8")
    proc = run_infer_sh(["0", str(config), "-o", "infer_batch_size=1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if "no CUDA support" in line]
    assert len(warnings) == 1
    assert "written: 2" in proc.stdout
    for args, expected in [(["-o", "infer_batchsize=1"], "unknown override key 'infer_batchsize' (did you mean "
                                                         "infer_batch_size?)"),
                           (["-o", "on_bad_row=ignore"], "'on_bad_row' must be one of error, skip"),
                           (["-o", "init_from_params=/nope/w.pdparams"], "init_from_params: file not found: "
                                                                         "/nope/w.pdparams"),
                           (["-o", "vocab_file=/nope/vocab.txt"], "vocab_file: file not found: /nope/vocab.txt"),
                           (["-o", "test_file=/nope/t.tsv"], "test_file: file not found: /nope/t.tsv")]:
        proc = run_infer_sh(["cpu", str(config), *args])
        assert proc.returncode == 2 and expected in proc.stderr, (args, proc.stderr[-800:])
        assert "Traceback" not in proc.stderr
    proc = run_infer_sh(["gpu7", str(config)])
    assert proc.returncode == 2 and "DEVICE must be a GPU index" in proc.stderr


def test_special_token_ids_are_checked_against_the_vocab(tmp_path, tiny):
    tsv = write_tsv(tmp_path / "in.tsv", [f"文本\t1\t{jpeg_b64(1)}"])
    with pytest.raises(InputError, match="cls_token: the config says 5"):
        run_inference(config_for(tiny, tsv, cls_token=5), encoder=EagerEncoder(make_tiny_model()))


def test_a_run_removes_the_temporaries_of_killed_runs_of_its_output(tmp_path, tiny):
    """What a run killed while writing its outputs leaves (hidden temporaries of a process that is gone) is
    removed by the next run of the same output; other files stay."""
    from ernievil2.fileio import temp_path_for
    dead = subprocess.Popen(["true"])
    dead.wait()
    tsv = write_tsv(tmp_path / "in.tsv", [f"第{i}行\t{i}\t{jpeg_b64(i)}" for i in range(5)])
    out = tiny["output_file"]
    os.makedirs(os.path.dirname(out))
    stale = [temp_path_for(out), temp_path_for(out[:-4] + ".npz", ".text")]
    stale = [p.replace(f"-{os.getpid()}", f"-{dead.pid}") for p in stale]
    for path in stale + [out + ".mine"]:
        open(path, "w").close()
    run_inference(config_for(tiny, tsv), encoder=EagerEncoder(make_tiny_model(seed=5)))
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(out + ".mine")
    assert sorted(os.listdir(os.path.dirname(out))) == ["emb.npz", "emb.out", "emb.out.mine"]


def test_a_worker_that_cannot_start_fails_the_run_instead_of_hanging(tmp_path):
    """multiprocessing replaces a pool worker whose initializer raises, forever; the error must reach the rank."""
    from ernievil2.infer.options import PipelineOptions
    from ernievil2.infer.workers import prepare_texts, start_pool
    options = PipelineOptions(vocab_file=str(tmp_path / "missing_vocab.txt"), num_workers=1)
    pool = start_pool(options)
    try:
        with pytest.raises(Exception, match="missing_vocab.txt"):
            pool.apply_async(prepare_texts, (["猫"],)).get(timeout=120)
    finally:
        pool.terminate()
        pool.join()
