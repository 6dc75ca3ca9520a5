"""Tables. Every row carries ``partition`` (the tenant) so isolation needs no data migration.

- ``resources``: the current version of each resource (one row per id, deleted ones kept as tombstones);
- ``resource_versions``: every version ever written, append-only, ``seq`` orders them in time;
- ``token_index``: identifier tokens of current versions, for conditional interactions;
- ``audit_chain``: the hash chain over audit records (Provenance, AuditEvent), in ``seq`` order.

Resource JSON is stored as text on SQLite and JSONB on PostgreSQL; the engine's
JSON (de)serialisers are the identity, so the application always sees JSON text.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

ResourceJson = JSON().with_variant(JSONB(), "postgresql")
# BIGINT on PostgreSQL, but INTEGER on SQLite so that it is the rowid alias (autoincrement)
SeqId = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources", metadata,
    Column("partition", String(64), primary_key=True),
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", ResourceJson, nullable=True),
)

resource_versions = Table(
    "resource_versions", metadata,
    Column("seq", SeqId, primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", ResourceJson, nullable=True),
    UniqueConstraint("partition", "res_type", "res_id", "version", name="uq_resource_versions_key"),
    Index("ix_resource_versions_type_seq", "partition", "res_type", "seq"),
    Index("ix_resource_versions_partition_seq", "partition", "seq"),
    Index("ix_resource_versions_instance_seq", "partition", "res_type", "res_id", "seq"),
)

token_index = Table(
    "token_index", metadata,
    Column("partition", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Index("ix_token_index_lookup", "partition", "res_type", "param", "code", "system"),
    Index("ix_token_index_resource", "partition", "res_type", "res_id"),
)

audit_chain = Table(
    "audit_chain", metadata,
    Column("seq", SeqId, primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    # a fork (two records claiming the same predecessor) is impossible, not just detected
    UniqueConstraint("partition", "prev_hash", name="uq_audit_chain_prev"),
    Index("ix_audit_chain_partition_seq", "partition", "seq"),
)
