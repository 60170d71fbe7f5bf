"""What run_train.sh does after training when the config has a test split: embed it with the final weights (as
run_infer.sh does, from the run's infer.yaml), measure retrieval recall (as eval_retri.py), classify the
configured zero-shot images, and build a search index over the test images and run the configured queries.
The test recall is also kept in OUTPUT_DIR/test_metrics.json (what a comparison of runs reads).

Embedding and evaluating the test split are the run's result: their errors are the run's errors.  Zero-shot
classification and search are extras: a part they need that is missing (a zeroshot file, faiss or another
optional package) is a logged note and the step is left out, never a failed run."""
import json
import logging
import os
from dataclasses import dataclass, field

from ..api.model import model_from_config
from ..errors import ConfigError, RuntimeSupportError
from ..eval.embedding_files import load_embeddings
from ..eval.metrics import retrieval_metrics
from ..fileio import write_text_atomic
from ..infer.options import load_infer_config
from ..infer.run import run_inference
from ..infer.zeroshot import load_zeroshot_config, run_zeroshot
from ..search.index import SearchIndex, build_index
from ..search.query import search

logger = logging.getLogger(__name__)
TEST_METRICS = "test_metrics.json"

@dataclass
class AfterTraining:
    """What the steps made: the test split's embedding summary and recall, the zero-shot summary, the search
    index and each query's hits; `notes` says which optional step was left out and why."""
    embedding: object = None                   # infer.run's Summary
    metrics: dict | None = None             # eval.metrics.retrieval_metrics of the test split
    zeroshot: object = None                    # infer.zeroshot's summary, or None when left out
    index_dir: str | None = None
    searches: list[tuple] = field(default_factory=list)  # (query, hits) with hits as search.query.search gives
    notes: list[str] = field(default_factory=list)


def after_training(out_dir, cfg, device):
    """Run the steps for a finished run in `out_dir` (its infer.yaml and final weights) with training config
    `cfg`, on `device` ("gpu" or "cpu")."""
    infer_yaml = os.path.join(out_dir, "infer.yaml")
    overrides = [("device", device), ("progress", False)]
    infer_cfg = load_infer_config(infer_yaml, overrides)
    result = AfterTraining()
    logger.info("embedding the test split %s with %s", infer_cfg.test_file, infer_cfg.init_from_params)
    model = model_from_config(infer_cfg)  # one encoder for every step
    result.embedding = run_inference(infer_cfg, encoder=model.encoder)
    embeddings = load_embeddings(_sidecar(result.embedding) or infer_cfg.output_file)
    try:
        result.metrics = retrieval_metrics(*embeddings, folds=cfg.data.test_folds)
    except ValueError as e:  # folds that do not divide the test images: known only now
        raise ConfigError(f"'data.test_folds' {cfg.data.test_folds}: {e}") from None
    write_text_atomic(os.path.join(out_dir, TEST_METRICS), json.dumps(result.metrics, indent=1) + "\n")
    _zeroshot(result, infer_yaml, overrides, cfg.zeroshot, out_dir, model)
    if cfg.search.queries:
        _search(result, cfg, out_dir, model)
    return result


def _sidecar(summary):
    """The .npz sidecar run_infer wrote beside its text output, if it wrote one."""
    return next((path for path in summary.also_written if path.endswith(".npz")), None)


def _note(result, text):
    logger.info("note: %s", text)
    result.notes.append(text)


def _zeroshot(result, infer_yaml, overrides, zeroshot, out_dir, model):
    if not (zeroshot.images and zeroshot.labels):
        return
    missing = [f"zeroshot.{key}: {path}" for key, path in zeroshot.items() if path and not os.path.exists(path)]
    if missing:
        _note(result, f"zero-shot classification left out: file not found ({'; '.join(missing)})")
        return
    values = {"images": zeroshot.images, "labels": zeroshot.labels, "templates": zeroshot.templates,
              "output_file": os.path.join(out_dir, "zeroshot_predictions.jsonl")}
    logger.info("zero-shot classification of %s into %s", zeroshot.images, zeroshot.labels)
    zcfg = load_zeroshot_config(infer_yaml, overrides + [(k, v) for k, v in values.items() if v])
    result.zeroshot = run_zeroshot(zcfg, encoder=model.encoder)


def _search(result, cfg, out_dir, model):
    index_dir = os.path.join(out_dir, "search_index")
    sidecar = _sidecar(result.embedding)
    if not sidecar:
        _note(result, "search left out: the test split's .npz sidecar was not written (write_sidecar: false)")
        return
    logger.info("building a search index over the test images: %s", index_dir)
    try:
        build_index(sidecar, index_dir, gallery=cfg.data.test_file, log=logger.info)
    except RuntimeSupportError as e:  # faiss (or the configured backend) is not installed
        _note(result, f"search left out: {e}")
        return
    result.index_dir = index_dir
    index = SearchIndex(index_dir)
    k = min(cfg.search.top_k, index.count)
    for query in cfg.search.queries:
        result.searches.append((str(query), search(model, index, text=str(query), k=k)))
