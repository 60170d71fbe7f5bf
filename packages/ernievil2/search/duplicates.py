"""Near-duplicate images of an index: groups are the connected components of the pairs whose cosine similarity
is at least a threshold.  The similarity of a pair is the inner product of its stored (L2-normalised, float32)
vectors computed in float64, so that which pairs count does not depend on the CPU's rounding.  Exact for every
index kind: candidates come from faiss's exact range search over the vectors, with a margin below the threshold
that covers float32 rounding, and are then decided in float64."""
import json

import numpy as np

from ..errors import ConfigError
from .backends import _faiss

BLOCK = 4096  # query rows per range search (bounds the memory of its results)


def duplicate_pairs(vectors, threshold):
    """[(row a, row b, similarity)] with a < b and similarity >= threshold, sorted."""
    if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold is a cosine similarity between -1 and 1, got {threshold}")
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    # A float32 inner product of unit vectors is within d * eps of the exact one (one rounding per term).
    margin = 2 * d * float(np.finfo(np.float32).eps)
    faiss = _faiss()
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    exact = vectors.astype(np.float64)
    pairs = []
    for start in range(0, n, BLOCK):
        limits, _, found = flat.range_search(vectors[start:start + BLOCK], threshold - margin)
        for i in range(min(BLOCK, n - start)):
            a = start + i
            candidates = found[limits[i]:limits[i + 1]]
            candidates = candidates[candidates > a]
            if len(candidates):
                sims = exact[candidates] @ exact[a]
                pairs += [(a, int(b), float(s)) for b, s in zip(candidates, sims) if s >= threshold]
    return sorted(pairs)


def duplicate_groups(index, threshold):
    """Groups of a SearchIndex: [{"ids": sorted ids, "pairs": [[id, id, similarity], ...]}] (two or more ids
    each), ordered by their first id."""
    pairs = duplicate_pairs(index.vectors(), threshold)
    parent = list(range(index.count))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    members, links = {}, {}
    for a, b, sim in pairs:
        group = root(a)
        members.setdefault(group, set()).update((a, b))
        links.setdefault(group, []).append([index.ids[a], index.ids[b], round(sim, 6)])
    groups = [{"ids": sorted(index.ids[r] for r in rows), "pairs": links[g]} for g, rows in members.items()]
    return sorted(groups, key=lambda g: g["ids"][0])


def format_groups(groups, threshold, fmt):
    """JSON ({"threshold", "similarity", "groups"}) or TSV (`group \\t id` lines, groups numbered from 1)."""
    if fmt == "json":
        return json.dumps({"threshold": threshold, "similarity": "cosine (inner product of normalised embeddings), "
                                                                 "pairs >= threshold, groups = connected components",
                           "groups": groups}, ensure_ascii=False, indent=1) + "\n"
    return "group\tid\n" + "".join(f"{n}\t{i}\n" for n, g in enumerate(groups, 1) for i in g["ids"])
