"""An index of date values by their upper bound: ``_sort=-date`` read in order.

A descending sort on a date parameter orders resources by their highest value's upper bound
(``search_sql.Builder.sort_key``). The lookup index starts with the lower bound, so such a
sort had to compute the key of every match and sort them all (215 ms for 65,051 Encounters,
BENCHMARKS.md); with this index a page walks the values from the top and stops at its end.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # low last: ge/le probes filter on it without reading the table (PostgreSQL otherwise
    # preferred the lookup index and scanned it from the start: 18 ms, 0.9 ms with low here)
    op.create_index("ix_search_date_high", "search_date", ["partition", "res_type", "param", "high", "res_id", "low"])


def downgrade() -> None:
    op.drop_index("ix_search_date_high", table_name="search_date")
