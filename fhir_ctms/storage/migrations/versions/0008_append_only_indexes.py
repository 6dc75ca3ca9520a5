"""Indexes that new rows append to: the audit chain's uniqueness by position, not by hash.

A unique index on ``audit_chain (partition, prev_hash)`` kept a fork out of the chain, but a
hash is random, so each of the two links a change writes went to a random leaf of that index:
measured (SQLite WAL frames per create, bench/create_icount.py's load), 2.6 of the 15.7 pages a
create wrote were that index's. ``position`` (the predecessor's plus one) is unique in its
partition instead: a fork is as impossible, and its index, appended to at its right edge, also
finds the chain head and walks the chain in order, so ``ix_audit_chain_partition_seq`` goes.

``ix_resource_versions_instance_seq`` goes too: an instance's versions are in ``version`` order,
which the unique key ``(partition, res_type, res_id, version)`` already indexes; each version
written cost one more index insert for nothing.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_chain", sa.Column("position", sa.BigInteger, nullable=True))
    # the existing links numbered in their chain order (seq, which verify walked until now)
    op.execute("UPDATE audit_chain SET position = numbered.position FROM "
               "(SELECT seq, ROW_NUMBER() OVER (PARTITION BY partition ORDER BY seq) AS position "
               "FROM audit_chain) AS numbered WHERE audit_chain.seq = numbered.seq")
    with op.batch_alter_table("audit_chain") as batch:  # SQLite: the table is copied
        batch.alter_column("position", existing_type=sa.BigInteger, nullable=False)
        batch.drop_constraint("uq_audit_chain_prev", type_="unique")
        batch.drop_index("ix_audit_chain_partition_seq")
        batch.create_unique_constraint("uq_audit_chain_position", ["partition", "position"])
    op.drop_index("ix_resource_versions_instance_seq", "resource_versions")


def downgrade() -> None:
    op.create_index("ix_resource_versions_instance_seq", "resource_versions",
                    ["partition", "res_type", "res_id", "seq"])
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_constraint("uq_audit_chain_position", type_="unique")
        batch.create_index("ix_audit_chain_partition_seq", ["partition", "seq"])
        batch.create_unique_constraint("uq_audit_chain_prev", ["partition", "prev_hash"])
        batch.drop_column("position")
