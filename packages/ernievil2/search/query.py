"""Querying an index with texts and images embedded by the model that built the gallery: one query, a composed
query (weighted positive and negative terms, combined in embedding space), or a batch of queries (one model call
per kind of input, one index search per distinct k and filter)."""
import json

import numpy as np

from ..errors import ConfigError

COMPOSE_EPSILON = 1e-6  # a composed vector shorter than this has no direction (its terms cancel out)


def search(model, index, text=None, image=None, k=10, where=None, terms=None):
    """Top-k of `index` (a SearchIndex) for one text, one image (path, bytes or RGB array) or `terms` (see
    compose), embedded by `model` (an ernievil2.api.Model): a list of {"id", "score", "metadata"}, best first,
    ties by ascending id.  where: a metadata filter (search.filters)."""
    if sum(x is not None for x in (text, image, terms)) != 1:
        raise ConfigError("give one of a text, an image or composed terms to search with")
    return search_batch(model, index, [_query(text, image, terms)], k=k, where=where)[0]


def compose(model, terms):
    """One L2-normalised query vector [D] from terms [{"text": str} or {"image": ...}, each with an optional
    "weight" (default 1; negative subtracts)]: sum(weight x embedding), normalised."""
    return _vectors(model, [{"terms": terms}])[0]


def search_batch(model, index, queries, k=10, where=None, limit=None):
    """Results for many queries: each a str (a text) or a dict with one of "text", "image", "terms" and optional
    "k" and "where" (else the call's).  Texts go to the model in one call and images in another; queries sharing
    k and filter are searched together.  limit: the most queries accepted."""
    queries = [q if isinstance(q, dict) else {"text": q} for q in queries]
    if not queries:
        raise ConfigError("the batch holds no queries")
    if limit is not None and len(queries) > limit:
        raise ConfigError(f"the batch holds {len(queries)} queries, over the limit of {limit}")
    for i, q in enumerate(queries):
        unknown = set(q) - {"text", "image", "terms", "k", "where", "id"}
        if unknown:
            raise ConfigError(f"query {i + 1}: unknown key(s) {', '.join(sorted(unknown))}")
        if sum(q.get(key) is not None for key in ("text", "image", "terms")) != 1:
            raise ConfigError(f"query {i + 1}: give exactly one of text, image or terms")
    vectors = _vectors(model, queries)
    groups = {}
    for i, q in enumerate(queries):
        key = (q.get("k", k), json.dumps(q.get("where", where), sort_keys=True))
        groups.setdefault(key, []).append(i)
    out = [None] * len(queries)
    for (group_k, _), members in groups.items():
        if not isinstance(group_k, int) or isinstance(group_k, bool):
            raise ConfigError(f"k must be an integer, got {group_k!r}")
        hits = index.search(vectors[members], group_k, where=queries[members[0]].get("where", where))
        for i, row in zip(members, hits):
            out[i] = [{"id": hit_id, "score": round(score, 6), "metadata": metadata}
                      for hit_id, score, metadata in row]
    return out


def _query(text, image, terms):
    if text is not None:
        return {"text": text}
    return {"image": image} if image is not None else {"terms": terms}


def _vectors(model, queries):
    """The query vectors [Q, D]: every text of every query (composed terms included) in one model call, every
    image in another."""
    texts, images, plans = [], [], []
    for i, q in enumerate(queries):
        terms = _terms(i, q)
        plan = []
        for j, (kind, value, weight) in enumerate(terms):
            if kind == "text":
                if not isinstance(value, str) or not value.strip():
                    raise ConfigError(f"query {i + 1}: " + ("the text query is empty" if len(terms) == 1 and
                                                            "terms" not in q else f"term {j + 1}: empty text"))
                plan.append(("text", len(texts), weight))
                texts.append(value)
            else:
                plan.append(("image", len(images), weight))
                images.append(value)
        plans.append(plan)
    embedded = {"text": model.encode_text(texts) if texts else None,
                "image": model.encode_image(images) if images else None}
    out = np.empty((len(queries), model.embed_dim), np.float32)
    for i, plan in enumerate(plans):
        if len(plan) == 1 and plan[0][2] == 1.0:
            out[i] = embedded[plan[0][0]][plan[0][1]]  # a single term: its own (normalised) embedding
            continue
        total = np.zeros(model.embed_dim, np.float64)
        for kind, position, weight in plan:
            total += weight * embedded[kind][position].astype(np.float64)
        norm = np.linalg.norm(total)
        if norm < COMPOSE_EPSILON:
            raise ConfigError(f"query {i + 1}: the terms cancel out (their weighted sum has no direction)")
        out[i] = total / norm
    return out


def _terms(i, q):
    """[(kind, value, weight)] of a query."""
    if q.get("terms") is None:
        kind = "text" if q.get("text") is not None else "image"
        return [(kind, q[kind], 1.0)]
    terms = q["terms"]
    if not isinstance(terms, (list, tuple)) or not terms:
        raise ConfigError(f"query {i + 1}: a composed query needs at least one term")
    out = []
    for j, term in enumerate(terms):
        if not isinstance(term, dict) or sum(term.get(key) is not None for key in ("text", "image")) != 1 \
                or set(term) - {"text", "image", "weight"}:
            raise ConfigError(f"query {i + 1}: term {j + 1} must be {{\"text\": ...}} or {{\"image\": ...}} with an "
                              f"optional \"weight\"")
        weight = term.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise ConfigError(f"query {i + 1}: term {j + 1}: weight must be a finite number, got {weight!r}")
        kind = "text" if term.get("text") is not None else "image"
        out.append((kind, term[kind], float(weight)))
    return out
