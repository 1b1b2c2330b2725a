"""Who forwards which stripe to whom: the digest owner's tracker, one ``Tracker`` per digest.

Owns: ``TrackerConfig``, ``Tracker`` and ``TrackerRegistry`` (the trackers of the digests a
node owns, bounded). The digest's owner (rendezvous over the members, agreed
by every node without messages) keeps one per digest it owns and answers joins with a parent
per stripe (``P2preg-Join`` -> ``P2preg-Parents``, ``swarm.pieces``). SplitStream over pieces:
piece ``i`` belongs to stripe ``i % stripes``; every stripe is a tree rooted at the owner, which
streams the blob in order from the upstream.

The rules, in order:

1. **Home stripe.** A node that joins incomplete gets a *home* stripe: the one with the fewest
   home nodes (ties: the lowest). It is **interior only in its home stripe**, with up to
   ``children`` children there, and a leaf in every other stripe. A stripe carries
   ``1 / stripes`` of the blob, so such a node uploads ``children / stripes`` copies:
   ``children = stripes`` (the defaults: 2 and 2) is **one copy per host**, and the interior
   sets of the stripes are disjoint, so no node forwards in two stripes' frontiers at once.
   (Slots shared by all stripes without a home stripe let a node take one child in each
   stripe, and the trees become chains as deep as the swarm: each joiner uses the last
   joiner's slots.)
2. **Complete nodes** (the owner, and a holder that joins saying so or that gossip names) are
   at depth 0 of every stripe with ``max(1, children // stripes)`` child slots in each: they
   have every piece, and their uplink carries one copy like everyone's. An owner that neither
   holds nor fills the blob while holders are known takes no children (``root_serves``).
3. **Parent of a joiner in a stripe**: the shallowest node that may be interior there (its
   home stripe, or complete) with a free slot; ties: fewest children there, then (complete
   nodes) fewest children in all stripes, then the seeded random.
   In its home stripe a joiner may instead take the place of a *leaf* child of a node at
   least as shallow (the leaf moves one level down, under the joiner; a free slot at the same
   depth is preferred): leaves sink to the bottom, interior nodes stay near the top, so a
   stripe is about ``log_children(N / stripes) + 1`` deep. No free slot anywhere (a closed
   parent, a leave): the shallowest eligible node with the fewest children, over its budget.
4. **Idempotent.** A join of a known node returns its current parents (a leaf may have moved
   since: that is why a fill re-joins now and then, ``SchedulerConfig.rejoin_*``). A new node
   past ``max_nodes`` gets no parents (its fill uses the swarm rules alone): a flood of joins
   under made-up names cannot grow the owner's memory without bound.
5. **Lost.** ``join(name, lost={stripe: peer})``: the node lost that parent (it failed,
   stalled, or said 404 for a piece it should have). If ``peer`` is still its parent there, it
   gets a new one, never ``peer`` and never a node of its own subtree in that stripe (so the
   trees never cycle), and ``peer`` takes no new children in that stripe.
6. **Leave.** ``leave(name)``: the node is gone (the owner calls it when gossip declares a
   member dead or it leaves: ``TrackerRegistry.leave``); its children get new parents (rule
   5's choice), they learn it on their next join, and no later joiner is given it.

Parents are always nodes that joined earlier or are complete, and a node is never re-attached
below itself, so following parents from any node ends at a depth-0 node
(``tests/swarm/test_tracker.py`` checks it under seeded random joins, losses and leaves).

Not handled: a node that lies about being complete (it is placed at the top; its children's
requests then fail and they re-join elsewhere); a tracker lost with its owner (the successor
starts an empty one, the fills re-join there).

Pure: no I/O, no clock reads (``now`` is passed in), randomness from the ``random.Random``
given; must not import asyncio, aiohttp or anything of the node.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """The knobs of ``Tracker`` (module docstring)."""

    stripes: int = 2
    #: Child slots of an incomplete node, all in its home stripe (``stripes`` = one copy).
    children: int = 2
    #: The owner answers a join this long after it came, with the parents at that moment
    #: (the caller's job: ``parents(name)``): the joins of a burst (every host pulls at
    #: once) move earlier joiners' places, and an answer sent at once would be stale.
    answer_hold_s: float = 0.02
    #: ``TrackerRegistry``: at most this many digests' trackers (the least recently joined
    #: dropped first), each forgotten this long after its last join.
    max_digests: int = 256
    forget_after_s: float = 600.0
    #: At most this many nodes in one digest's trees (memory bound against a flood of joins
    #: under made-up names): a new node past it gets no parents (its fill uses the swarm
    #: rules alone); the nodes already in keep their places.
    max_nodes: int = 16384


@dataclass(slots=True)
class _Node:
    home: int | None
    """Its home stripe (None: complete, interior everywhere)."""
    parent: dict[int, str] = field(default_factory=dict)
    kids: dict[int, list[str]] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    """Stripes in which it takes no new children (a child lost it there)."""
    seen_at: float = -math.inf


class Tracker:
    """The stripe trees of one digest, rooted at its owner ``root`` (module docstring)."""

    def __init__(self, root: str, config: TrackerConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config or TrackerConfig()
        if self.config.stripes < 1 or self.config.children < 1:
            raise ValueError("stripes and children must be at least 1")
        self.root = root
        self._rng = rng or random.Random(0)
        self._nodes: dict[str, _Node] = {}
        self._homes = [0] * self.config.stripes
        self.moves = 0
        """Leaves moved down by interior joiners, and nodes moved by a loss or a leave."""
        self.overflows = 0
        """Children placed over their parent's budget (no free slot anywhere)."""
        self.losses = 0
        """Lost parents reported by their children that moved them (rule 5)."""
        self.refused = 0
        """Joins of new nodes answered with no parents: the trees held ``max_nodes``."""
        self._root = self._add_complete(root, -math.inf)
        self.root_serves = True
        """Whether the owner holds or fills the blob (``TrackerRegistry``): when it does not
        and holders are known, it takes no children (rule 2), or asking it would make it fetch."""

    # -- what the owner is told ---------------------------------------------------------------

    def join(self, name: str, *, now: float, complete: bool = False,
             lost: Mapping[int, str] | None = None) -> dict[int, str]:
        """``name`` joins (or re-joins) the digest's swarm; returns its parent per stripe (none
        for a complete node, which needs none). ``lost``: parents it lost (rule 5)."""
        node = self._nodes.get(name)
        if node is None:
            if len(self._nodes) >= self.config.max_nodes:
                self.refused += 1
                return {}
            node = self._add_complete(name, now) if complete else self._add(name)
        node.seen_at = max(node.seen_at, now)
        for stripe, peer in (lost or {}).items():
            if 0 <= stripe < self.config.stripes and node.parent.get(stripe) == peer:
                lost_node = self._nodes.get(peer)
                if lost_node is not None:
                    lost_node.closed.add(stripe)
                self.losses += 1
                self._move(name, stripe, avoid={peer})
        return dict(node.parent)

    def leave(self, name: str) -> bool:
        """``name`` left the swarm (it died, or it was forgotten); rule 6. Whether it was in."""
        node = self._nodes.get(name)
        if node is None or name == self.root:
            return False
        for stripe in range(self.config.stripes):
            parent = node.parent.get(stripe)
            if parent is not None:
                self._nodes[parent].kids[stripe].remove(name)
        del self._nodes[name]
        if node.home is not None:
            self._homes[node.home] -= 1
        for stripe, kids in node.kids.items():
            for kid in list(kids):
                self._nodes[kid].parent.pop(stripe, None)
                self._move(kid, stripe, avoid=set())
        return True

    # -- what it answers ----------------------------------------------------------------------

    def parents(self, name: str) -> dict[int, str]:
        node = self._nodes.get(name)
        return dict(node.parent) if node else {}

    def children(self, name: str, stripe: int) -> list[str]:
        node = self._nodes.get(name)
        return list(node.kids.get(stripe, ())) if node else []

    def depth(self, name: str, stripe: int) -> int:
        return self._nodes[name].depth[stripe]

    def home(self, name: str) -> int | None:
        return self._nodes[name].home

    def members(self) -> list[str]:
        return list(self._nodes)

    def last_seen(self) -> float:
        """The latest join of any node (the owner forgets an idle tracker)."""
        return max(n.seen_at for n in self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    # -- internals ----------------------------------------------------------------------------

    def _add_complete(self, name: str, now: float) -> _Node:
        k = self.config.stripes
        node = self._nodes[name] = _Node(None, seen_at=now)
        for s in range(k):
            node.kids[s] = []
            node.depth[s] = 0
        return node

    def _add(self, name: str) -> _Node:
        k = self.config.stripes
        home = min(range(k), key=lambda s: (self._homes[s], s))
        self._homes[home] += 1
        node = self._nodes[name] = _Node(home)
        node.kids[home] = []
        for s in range(k):
            self._attach(name, s, avoid=set(), interior=(s == home))
        return node

    def _cap(self, node: _Node, stripe: int) -> int:
        if node is self._root and not self.root_serves and len(self._nodes) > 1 and any(
                n.home is None for n in self._nodes.values() if n is not node):
            return 0  # rule 2: holders known, and the owner has no fill of its own
        if node.home is None:
            return max(1, self.config.children // self.config.stripes)
        return self.config.children if node.home == stripe else 0

    def _attach(self, name: str, stripe: int, *, avoid: set[str], interior: bool) -> None:
        """Give ``name`` (detached in ``stripe``) a parent there (rule 3)."""
        banned = avoid | self._subtree(name, stripe)
        free: list[str] = []
        free_key: tuple[int, int, int] | None = None
        leafy: list[tuple[str, str]] = []
        leaf_key: tuple[int, int, int] | None = None
        for other, o in self._nodes.items():
            if other in banned or stripe in o.closed or stripe not in o.depth:
                continue
            cap = self._cap(o, stripe)
            if cap == 0:
                continue
            kids = o.kids[stripe]
            key = (o.depth[stripe], len(kids),
                   sum(len(k) for k in o.kids.values()) if o.home is None else 0)
            if len(kids) < cap:
                if free_key is None or key < free_key:
                    free, free_key = [other], key
                elif key == free_key:
                    free.append(other)
            elif interior and (leaf_key is None or key <= leaf_key):
                found = [(other, kid) for kid in kids if kid not in banned
                         and self._nodes[kid].home != stripe
                         and not self._nodes[kid].kids.get(stripe)]
                if found:
                    if leaf_key is None or key < leaf_key:
                        leafy, leaf_key = found, key
                    else:
                        leafy += found
        if leaf_key is not None and (free_key is None or leaf_key[0] < free_key[0]):
            parent, leaf = leafy[self._rng.randrange(len(leafy))]
            kids = self._nodes[parent].kids[stripe]
            kids[kids.index(leaf)] = name
            self._nodes[name].parent[stripe] = parent
            self._set_depth(name, stripe, self._nodes[parent].depth[stripe] + 1)
            self._nodes[leaf].parent.pop(stripe)
            self._link(leaf, stripe, name)
            self.moves += 1
            return
        if free:
            self._link(name, stripe, free[self._rng.randrange(len(free))])
            return
        # No free slot anywhere: the shallowest eligible node with the fewest children.
        over = sorted(((o.depth[stripe], len(o.kids[stripe])), other)
                      for other, o in self._nodes.items()
                      if other not in banned and stripe in o.depth and self._cap(o, stripe) > 0)
        self.overflows += 1
        # Every eligible node banned (only when the root itself was lost): the root takes it.
        self._link(name, stripe, over[0][1] if over else self.root)

    def _link(self, name: str, stripe: int, parent: str) -> None:
        p = self._nodes[parent]
        p.kids.setdefault(stripe, []).append(name)
        self._nodes[name].parent[stripe] = parent
        self._set_depth(name, stripe, p.depth[stripe] + 1)

    def _set_depth(self, name: str, stripe: int, depth: int) -> None:
        todo = [(name, depth)]
        while todo:
            n, d = todo.pop()
            node = self._nodes[n]
            node.depth[stripe] = d
            todo += [(kid, d + 1) for kid in node.kids.get(stripe, ())]

    def _subtree(self, name: str, stripe: int) -> set[str]:
        out = {name}
        todo = [name]
        while todo:
            for kid in self._nodes[todo.pop()].kids.get(stripe, ()):
                if kid not in out:
                    out.add(kid)
                    todo.append(kid)
        return out

    def _move(self, name: str, stripe: int, avoid: Iterable[str]) -> None:
        """Detach ``name`` in ``stripe`` (with its subtree) and attach it elsewhere."""
        node = self._nodes[name]
        old = node.parent.pop(stripe, None)
        if old is not None and old in self._nodes:
            self._nodes[old].kids[stripe].remove(name)
        self.moves += 1
        self._attach(name, stripe, avoid=set(avoid), interior=False)


class TrackerRegistry:
    """The trackers of the digests this node is asked as owner (``P2preg-Join``), bounded:
    at most ``max_digests``, each dropped ``forget_after_s`` after its last join. ``holders``
    names the nodes known to hold a digest whole (gossip): each joins as a complete node;
    ``serves`` says whether this node holds or fills the digest (``Tracker.root_serves``)."""

    def __init__(self, node_name: str, config: TrackerConfig | None = None,
                 rng: random.Random | None = None,
                 holders: Callable[[str], Iterable[str]] = lambda digest: (),
                 serves: Callable[[str], bool] = lambda digest: True) -> None:
        self.node_name = node_name
        self.config = config or TrackerConfig()
        self._rng = rng or random.Random(0)
        self._holders = holders
        self._serves = serves
        self._trackers: OrderedDict[str, Tracker] = OrderedDict()
        #: totals over every tracker this node kept (metrics): joins answered, lost parents
        #: reported that moved a child (rule 5), members taken out of a tree (rule 6)
        self.joins = 0
        self.losses = 0
        self.leaves = 0
        #: joins of new nodes refused a place because a tree held ``max_nodes``
        self.refused = 0

    def join(self, digest: str, name: str, *, now: float, complete: bool = False,
             lost: Mapping[int, str] | None = None) -> dict[int, str]:
        """``Tracker.join`` on the digest's tracker (made on the first join)."""
        self._expire(now)
        tracker = self._trackers.get(digest)
        if tracker is None:
            tracker = self._trackers[digest] = Tracker(
                self.node_name, self.config, random.Random(self._rng.random()))
            while len(self._trackers) > self.config.max_digests:
                self._trackers.popitem(last=False)
        else:
            self._trackers.move_to_end(digest)
        tracker.root_serves = self._serves(digest)
        for holder in self._holders(digest):
            if holder != self.node_name and holder != name:
                tracker.join(holder, now=now, complete=True)
        self.joins += 1
        before, refused = tracker.losses, tracker.refused
        parents = tracker.join(name, now=now, complete=complete, lost=lost)
        self.losses += tracker.losses - before
        self.refused += tracker.refused - refused
        return parents

    def parents(self, digest: str, name: str) -> dict[int, str]:
        tracker = self._trackers.get(digest)
        return tracker.parents(name) if tracker is not None else {}

    def get(self, digest: str) -> Tracker | None:
        return self._trackers.get(digest)

    def leave(self, name: str) -> None:
        """``name`` left the cluster (gossip declared it dead, or it left): out of every tree,
        its children moved (rule 6). The node calls it on gossip's death and leave events."""
        for tracker in self._trackers.values():
            self.leaves += tracker.leave(name)

    def __len__(self) -> int:
        return len(self._trackers)

    def _expire(self, now: float) -> None:
        for digest in [d for d, t in self._trackers.items()
                       if now - t.last_seen() > self.config.forget_after_s]:
            del self._trackers[digest]
