"""Tables. Every row carries ``partition`` (the tenant) so isolation needs no data migration.

- ``resources``: the current version of each resource (one row per id, deleted ones kept as tombstones);
- ``resource_versions``: every version ever written, append-only, ``seq`` orders them in time;
- ``search_*``: the search index of current versions, one table per parameter type
  (string, token, reference, date, number, quantity, uri), rows from ``search.extract``;
- ``audit_chain``: the hash chain over audit records (Provenance, AuditEvent), in ``position`` order.

Resource JSON is stored as text on SQLite and JSONB on PostgreSQL; the engine's
JSON (de)serialisers are the identity, so the application always sees JSON text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, PrimaryKeyConstraint,
                        String, Table, Text, UniqueConstraint)
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
)

#: byte-order comparison on PostgreSQL whatever the database's locale (prefix searches are ranges)
SearchText = Text().with_variant(Text(collation="C"), "postgresql")


def _search_table(name: str, values: dict[str, Any], lookup: tuple[str, ...]) -> Table:
    """One search index table (migration 0003): the resource and parameter, the value columns;
    the key starts with the resource, one lookup index serves searches."""
    return Table(
        name, metadata,
        Column("partition", String(64), nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *(Column(col, kind, nullable=False) for col, kind in values.items()),
        PrimaryKeyConstraint("partition", "res_type", "res_id", "param", *values, name=f"pk_{name}"),
        Index(f"ix_{name}_lookup", "partition", *lookup, "res_id"),
        sqlite_with_rowid=False,
    )


search_string = _search_table("search_string", {"normalised": SearchText, "exact": SearchText},
                              ("res_type", "param", "normalised"))
search_token = _search_table("search_token", {"system": SearchText, "code": SearchText, "text": SearchText},
                             ("res_type", "param", "code", "system"))
search_reference = _search_table("search_reference",
                                 {"target_type": String(64), "target_id": SearchText, "version": SearchText},
                                 ("target_type", "target_id", "param", "res_type"))
search_date = _search_table("search_date", {"low": BigInteger, "high": BigInteger},
                            ("res_type", "param", "low", "high"))
#: descending date sorts read in order (migration 0005)
Index("ix_search_date_high", search_date.c.partition, search_date.c.res_type, search_date.c.param,
      search_date.c.high, search_date.c.res_id, search_date.c.low)
search_number = _search_table("search_number", {"low": Float, "high": Float}, ("res_type", "param", "low", "high"))
search_quantity = _search_table("search_quantity", {"system": SearchText, "code": SearchText, "low": Float, "high": Float},
                                ("res_type", "param", "code", "low"))
search_uri = _search_table("search_uri", {"uri": SearchText}, ("res_type", "param", "uri"))
search_composite = _search_table(
    "search_composite", {"c1_system": SearchText, "c1_code": SearchText, "c2_system": SearchText,
                         "c2_code": SearchText, "low": Float, "high": Float},
    ("res_type", "param", "c1_code", "c2_code", "low"))

audit_chain = Table(
    "audit_chain", metadata,
    Column("seq", SeqId, primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    # the link's place in the chain: its predecessor's plus one. Unique, so a fork (two records
    # claiming the same predecessor) is impossible, not just detected; and the index finds the
    # head and walks the chain in order (migration 0008)
    Column("position", BigInteger, nullable=False),
    UniqueConstraint("partition", "position", name="uq_audit_chain_position"),
)

# -- the SMART authorization server (migration 0006, storage/auth_store.py) --------------------
# Server-wide, not per partition: clients, users and keys belong to the server, not to a tenant.
# Times are UNIX seconds; JSON values are text; secrets and tokens are stored hashed only.

auth_clients = Table(
    "auth_clients", metadata,
    Column("client_id", String(128), primary_key=True),
    Column("kind", String(32), nullable=False),           # public | confidential-symmetric | confidential-asymmetric
    Column("secret_hash", Text, nullable=True),           # argon2
    Column("redirect_uris", Text, nullable=False),        # JSON list
    Column("scopes", Text, nullable=False),               # allowed scopes, space separated
    Column("jwks", Text, nullable=True),                  # JSON JWK Set
    Column("jwks_uri", Text, nullable=True),
    Column("created", BigInteger, nullable=False),
)

auth_users = Table(
    "auth_users", metadata,
    Column("username", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),        # argon2
    Column("fhir_user", Text, nullable=True),             # e.g. Practitioner/123
    Column("patients", Text, nullable=False),             # JSON list of Patient ids the user may pick
    Column("created", BigInteger, nullable=False),
    Column("roles", Text, nullable=False, server_default="[]"),  # JSON list of role names (migration 0007)
)

auth_codes = Table(
    "auth_codes", metadata,
    Column("code_hash", String(64), primary_key=True),    # SHA-256 hex of the code
    Column("client_id", String(128), nullable=False),
    Column("grant_json", Text, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False),
)

auth_refresh_tokens = Table(
    "auth_refresh_tokens", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family", String(64), nullable=False),         # every rotation of one grant
    Column("client_id", String(128), nullable=False),
    Column("grant_json", Text, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),          # active | rotated | revoked
    Index("ix_auth_refresh_tokens_family", "family"),
)

auth_launches = Table(
    "auth_launches", metadata,
    Column("handle_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=True),      # the app it is for (any app if null)
    Column("context_json", Text, nullable=False),
    Column("expires", BigInteger, nullable=False),
)

auth_jti = Table(
    "auth_jti", metadata,
    Column("client_id", String(128), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires", BigInteger, nullable=False),
)

auth_revoked = Table(          # revoked access tokens (a jti, or "grant:<family>": all of a grant's), until they expire
    "auth_revoked", metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires", BigInteger, nullable=False),
)

auth_login_failures = Table(                              # failed logins, for throttling (migration 0007)
    "auth_login_failures", metadata,
    Column("id", String(32), primary_key=True),
    Column("subject", String(200), nullable=False),       # "user:<username>" or "address:<ip>"
    Column("at", BigInteger, nullable=False),
    Index("ix_auth_login_failures_subject_at", "subject", "at"),
)

auth_keys = Table(
    "auth_keys", metadata,
    Column("kid", String(128), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_jwk", Text, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("retired", BigInteger, nullable=True),         # when a newer key took over signing
)
