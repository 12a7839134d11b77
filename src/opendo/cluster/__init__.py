"""Cluster mode: N nodes in front of PostgreSQL, one instance per object, fenced by the database.

The modules, each of one job: ``schema`` (the tables, versioned), ``pg`` (connections bounded
in time), ``lease`` (a node's membership), ``placement`` (claims and epochs), ``wal`` (an
object's changes as pages), ``storage`` (the SQLite cache, replication to PostgreSQL,
snapshots, bookmarks), ``alarms`` (due alarms of unowned objects; pruning history),
``driver`` (the admin commands and migrations), ``forwarder`` (authenticated TCP between
nodes) and ``node`` (one node, wired). Only ``opendo.project`` chooses this mode.
"""
