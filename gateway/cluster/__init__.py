"""Many gateway nodes as one gateway, with NATS as the engine.

What crosses NATS: each stream's encoded packets (published by the node that owns the
stream, only while another node wants them), interest beats from nodes that have readers,
a JetStream key-value directory (who owns which stream, each node's load), and
request/reply to a named node (end a session it holds). See docs/cluster.md.
"""
