"""The benchmark suite behind ``meshlet bench`` (docs/benchmarks.md).

Pure pieces (``histogram``, ``schedule``, ``report``) are unit-tested without
sockets; ``loadgen`` and ``upstreams`` run as their own processes; ``topologies``
starts and stops the systems under test; ``runner`` drives a whole run.
"""
