"""Initial schema: current resources, append-only versions, identifier tokens, audit chain.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(JSONB(), "postgresql")
_seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("partition", sa.String(64), primary_key=True),
        sa.Column("res_type", sa.String(64), primary_key=True),
        sa.Column("res_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content", _json, nullable=True),
    )
    op.create_table(
        "resource_versions",
        sa.Column("seq", _seq, primary_key=True, autoincrement=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content", _json, nullable=True),
        sa.UniqueConstraint("partition", "res_type", "res_id", "version", name="uq_resource_versions_key"),
    )
    op.create_index("ix_resource_versions_type_seq", "resource_versions", ["partition", "res_type", "seq"])
    op.create_index("ix_resource_versions_partition_seq", "resource_versions", ["partition", "seq"])
    op.create_table(
        "token_index",
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
    )
    op.create_index("ix_token_index_lookup", "token_index", ["partition", "res_type", "param", "code", "system"])
    op.create_index("ix_token_index_resource", "token_index", ["partition", "res_type", "res_id"])
    op.create_table(
        "audit_chain",
        sa.Column("seq", _seq, primary_key=True, autoincrement=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("partition", "prev_hash", name="uq_audit_chain_prev"),
    )


def downgrade() -> None:
    for table in ("audit_chain", "token_index", "resource_versions", "resources"):
        op.drop_table(table)
