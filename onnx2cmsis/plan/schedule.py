"""Peak-memory-aware scheduling: the execution orders of the graph's nodes worth placing.

A model with branches (residual adds, concatenations) can run its nodes in many topological orders,
and the order decides which buffers are alive at once. The arena can be no smaller than the largest
live set of its order (the live-set bound), so the order that minimises that bound is searched:

- exactly, by dynamic programming over the sets of already-executed nodes (the graph's down-sets;
  1D CNNs are chains with a few branches, so there are few) while there are at most
  EXACT_STATE_LIMIT of them;
- otherwise greedily: run the ready node during which, then after which, the fewest bytes are live.

`candidate_orders` returns that order with the canonical one (and the greedy one), so placement can
keep whichever gives the smallest arena. Ties are broken by each node's canonical rank, derived from
names (`canonical_ranks`), never by the order the nodes arrived in: the same model gives the same C.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.plan.liveness import Liveness, live_bound

# Down-sets explored before falling back to the greedy order. Measured (2 cores, Python 3.11): 6-17 us
# per down-set for 21-31 nodes, so 46,657 down-sets (six parallel 5-conv branches) take 0.8 s; a
# residual CNN has a few hundred.
EXACT_STATE_LIMIT = 50_000


@dataclass(frozen=True)
class Order:
    nodes: tuple[int, ...]  # node indices in execution order
    bound: int  # its live-set bound (bytes)
    method: str  # "exact" (smallest bound of all orders), "greedy" or "canonical"


@dataclass(frozen=True)
class Search:
    orders: list[Order]  # distinct candidate orders, the exact or greedy one first
    exact: bool  # whether orders[0] has the smallest bound of every topological order
    states: int  # down-sets the exact search explored


def candidate_orders(graph: Graph, live: Liveness) -> Search:
    n = len(graph.nodes)
    deps = node_dependencies(graph)
    rank = canonical_ranks(graph.nodes)
    canonical = tuple(_topological(n, deps, lambda ready, done: min(ready, key=lambda v: rank[v])))
    exact, states = _exact(n, deps, live, rank)
    first, method = (exact, "exact") if exact is not None else (tuple(_greedy(n, deps, live, rank)), "greedy")
    orders = [Order(first, live_bound(list(first), live), method)]
    if canonical != first:
        orders.append(Order(canonical, live_bound(list(canonical), live), "canonical"))
    return Search(orders, exact is not None, states)


def node_dependencies(graph: Graph) -> list[frozenset[int]]:
    producer = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs}
    return [frozenset(producer[t] for t in n.inputs if t in producer) for n in graph.nodes]


def canonical_ranks(nodes: list[Node]) -> list[int]:
    """Each node's rank by a key that does not depend on its position: its outputs' names (unique in
    the graph), then its own name and op."""
    order = sorted(range(len(nodes)), key=lambda i: (tuple(nodes[i].outputs), nodes[i].name, nodes[i].op))
    rank = [0] * len(nodes)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


class _Masks:
    """Buffers as bit masks over node indices, for the searches' inner loop."""

    def __init__(self, live: Liveness) -> None:
        self.sizes = [b.size for b in live.buffers]
        self.producer = [1 << b.producer for b in live.buffers]
        self.readers = [sum(1 << r for r in b.readers) for b in live.buffers]
        # a node writing over its input holds the two as the larger while it runs (plan/liveness.py)
        self.scratch = [s - o for s, o in zip(live.scratch, live.overlap or [0] * len(live.scratch))]

    def during(self, done: int, v: int) -> int:
        """Bytes live while node v runs after the nodes in bit set `done`."""
        total = self.scratch[v]
        bit = 1 << v
        for size, p, r in zip(self.sizes, self.producer, self.readers):
            if p == bit or (done & p and r & ~done):
                total += size  # written now, or written before and still to be read (by v or later)
        return total

    def after(self, done: int) -> int:
        return sum(size for size, p, r in zip(self.sizes, self.producer, self.readers) if done & p and r & ~done)


def _exact(n: int, deps: list[frozenset[int]], live: Liveness, rank: list[int]) -> tuple[tuple[int, ...] | None, int]:
    """The order with the smallest peak (None past EXACT_STATE_LIMIT down-sets) and the down-sets explored."""
    dep_bits = [sum(1 << d for d in ds) for ds in deps]
    masks = _Masks(live)
    by_rank = sorted(range(n), key=lambda v: rank[v])
    # per down-set: (peak so far, rank sequence, order); one layer (number of nodes run) at a time
    layer: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {0: (0, (), ())}
    explored = 1
    for _ in range(n):
        nxt: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {}
        for done, (peak, ranks, order) in layer.items():
            for v in by_rank:
                if done >> v & 1 or dep_bits[v] & ~done:
                    continue
                state = done | (1 << v)
                cand = (max(peak, masks.during(done, v)), ranks + (rank[v],), order + (v,))
                old = nxt.get(state)
                if old is None or cand[:2] < old[:2]:
                    nxt[state] = cand
        explored += len(nxt)
        if explored > EXACT_STATE_LIMIT:
            return None, explored
        layer = nxt
    ((_, _, order),) = layer.values()
    return order, explored


def _topological(n: int, deps: list[frozenset[int]], pick) -> list[int]:
    done: set[int] = set()
    order: list[int] = []
    while len(order) < n:
        ready = [v for v in range(n) if v not in done and deps[v] <= done]
        v = pick(ready, done)
        order.append(v)
        done.add(v)
    return order


def _greedy(n: int, deps: list[frozenset[int]], live: Liveness, rank: list[int]) -> list[int]:
    masks = _Masks(live)

    def pick(ready: list[int], done: set[int]) -> int:
        bits = sum(1 << d for d in done)
        return min(ready, key=lambda v: (masks.during(bits, v), masks.after(bits | 1 << v), rank[v]))

    return _topological(n, deps, pick)
