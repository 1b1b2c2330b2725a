"""Operating a cluster: cluster-wide pulls (preheat, fan-out measurement) and the status page.

Modules: ``reference`` (image names as users write them), ``pull`` (one node pulling an image into
its cache as a client would), ``peer`` (the signed peer routes that start and report those
pulls), ``coordinator`` (one node asking chosen nodes to pull, and following them), ``operator``
(the signed operator routes on the /v2 listener the CLI calls), ``status`` + ``ui.html`` (the
status page and its JSON), ``report`` (the fan-out report shared with ``benchmarks/fanout.py``),
``client`` (the ``p2preg preheat`` / ``p2preg fanout`` commands).

Imports run one way: ``node``/``cli`` import this package; it imports storage, registry,
gossip and p2p pieces it reads, never the other way round.
"""
