"""An independent round counter of Kruskal by deterministic reservations (a helper module, not a
test module): the oracle of the round counts that walnet's "reservations" kernels report.

It follows the rules as stated, edge by edge, with plain Python data structures: each round
takes a window of sorted edges (the first `window` undecided ones, or the positions from the first
undecided one on), finds each edge's roots, drops edges inside one component (and, in the min_size
pass, edges whose sides both have min_size pixels), and decides every edge that is the first window
edge on both of its roots. The chain rule then lets the owner of a winner (its smaller root r) go on
along r's window edges j = (r, s) while j is the first window edge on s or all of s's window edges
go to r, stopping after merging an s with window edges to other roots. The prefilter keeps, for the
min_size pass, only the edges with two different sides one of which is below min_size at its start.

It also returns the components, so a test can check that the rules never change the labels. It is
slow (pure Python): use it on small images.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def sorted_edges(image: np.ndarray, sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, q, w): skimage's 8-connected edges of an H x W x C float64 image, smoothed with scipy's
    Gaussian, sorted stably by weight (walnet's order)."""
    import scipy.ndimage as ndi

    img = ndi.gaussian_filter(image, sigma=[sigma, sigma, 0]) if sigma > 0 else image
    h, w, _ = img.shape
    pix = np.arange(h * w).reshape(h, w)
    pairs = [(pix[:, :-1], pix[:, 1:]), (pix[:-1, :], pix[1:, :]), (pix[:-1, :-1], pix[1:, 1:]),
             (pix[:-1, 1:], pix[1:, :-1])]
    p = np.concatenate([a.ravel() for a, _ in pairs])
    q = np.concatenate([b.ravel() for _, b in pairs])
    flat = img.reshape(h * w, -1)
    d = flat[q] - flat[p]
    sq = d[:, 0] * d[:, 0]
    for c in range(1, d.shape[1]):
        sq = sq + d[:, c] * d[:, c]
    cost = np.sqrt(sq)
    order = np.argsort(cost, kind="stable")
    return p[order], q[order], cost[order]


def reservation_rounds(p, q, w, n_pixels: int, scale: float, min_size: int, *, window: int = 64,
                       compact: bool = True, prefilter: bool = True, chain: bool = True):
    """(roots, merge-pass rounds, min_size-pass rounds) over sorted edges (p, q, w)."""
    k = scale / 255.0
    parent = list(range(n_pixels))
    size = [1] * n_pixels
    cint = [0.0] * n_pixels
    p, q, w = [int(v) for v in p], [int(v) for v in q], [float(v) for v in w]

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def merges(e, a, b, min_size_pass):
        if min_size_pass:
            return size[a] < min_size or size[b] < min_size
        ta = float(np.float32(cint[a] + k / size[a]))
        tb = float(np.float32(cint[b] + k / size[b]))
        return w[e] < min(ta, tb)

    def join(e, a, b, min_size_pass):
        lo, hi = min(a, b), max(a, b)
        parent[hi] = lo
        size[lo] = size[a] + size[b]
        if not min_size_pass:
            cint[lo] = w[e]
        return lo

    def run(edges, min_size_pass):
        decided = [False] * len(edges)
        start, rounds = 0, 0
        while start < len(edges):
            if compact:
                win = []
                t = start
                while t < len(edges) and len(win) < window:
                    if not decided[t]:
                        win.append(t)
                    t += 1
            else:
                win = [t for t in range(start, min(start + window, len(edges))) if not decided[t]]
            rounds += 1
            roots = {}
            on_root = defaultdict(list)  # root -> its live window edges, in order
            for t in win:
                e = edges[t]
                a, b = find(p[e]), find(q[e])
                if a == b or (min_size_pass and size[a] >= min_size and size[b] >= min_size):
                    decided[t] = True
                    continue
                roots[t] = (a, b)
                on_root[a].append(t)
                on_root[b].append(t)
            winners = [t for t, (a, b) in roots.items() if on_root[a][0] == t and on_root[b][0] == t]
            for t0 in winners:
                a, b = roots[t0]
                r = min(a, b)
                hub = r
                for t in on_root[r]:
                    s = roots[t][1] if roots[t][0] == r else roots[t][0]
                    only_to_r = all(r in roots[u] for u in on_root[s])
                    if t != t0 and on_root[s][0] != t and not only_to_r:
                        break
                    decided[t] = True
                    current = find(s)
                    if current == hub:  # merged into the hub earlier in this chain
                        continue
                    merged = merges(edges[t], hub, current, min_size_pass)
                    if merged:
                        hub = join(edges[t], hub, current, min_size_pass)
                    if not chain or (merged and not only_to_r):
                        break
            while start < len(edges) and decided[start]:
                start += 1
        return rounds

    all_edges = list(range(len(p)))
    merge_rounds = run(all_edges, False)
    second = all_edges
    if prefilter:
        second = [e for e in all_edges if (a := find(p[e])) != (b := find(q[e])) and
                  (size[a] < min_size or size[b] < min_size)]
    min_size_rounds = run(second, True)
    return np.array([find(x) for x in range(n_pixels)]), merge_rounds, min_size_rounds
