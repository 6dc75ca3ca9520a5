"""The composite search index: both components of one element in one row (search.html#composite).

A composite parameter (``code-value-quantity=loinc|2823-3$lt5.4``) must match its components
on the same element, which separate index rows cannot tell. A row holds the first component
as (system, code) and the second as (system, code) and/or a range [low, high): a token, a
string (normalised, in ``c2_code``), a reference (``Type/id`` in ``c2_code``), a quantity
(its system and code, and its range), a number or a date (its range; dates in microseconds,
exact in a double up to the year 2255).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_VALUES = {"c1_system": _text, "c1_code": _text, "c2_system": _text, "c2_code": _text,
           "low": sa.Float, "high": sa.Float}


def upgrade() -> None:
    op.create_table(
        "search_composite",
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        *(sa.Column(col, kind, nullable=False) for col, kind in _VALUES.items()),
        sa.PrimaryKeyConstraint("partition", "res_type", "res_id", "param", *_VALUES, name="pk_search_composite"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_search_composite_lookup", "search_composite",
                    ["partition", "res_type", "param", "c1_code", "c2_code", "low", "res_id"])


def downgrade() -> None:
    op.drop_table("search_composite")
