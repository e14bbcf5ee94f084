"""One page of a tenant's calls or lines, newest first: the query both SQL stores run.

Rows are ordered by their `seq` (creation order); a page asks for one row more than it returns,
which tells whether another page exists, and the next page starts below the last row returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# `before` when a listing starts at the newest: above every seq.
NEWEST = 1 << 62


def newest_first(
    table: str, tenant: str, filters: Mapping[str, object | None], *, limit: int, before: int, mark: str
) -> tuple[str, list[object]]:
    """The SQL and its arguments: `table`'s rows of `tenant` below `before` (0: from the newest)
    whose columns equal each filter that is not None. `mark` is the driver's placeholder ("?" for
    sqlite3, "%s" for psycopg); `table` and the filter names are this code's, never a caller's."""
    sql = f"SELECT seq, data FROM {table} WHERE tenant = {mark} AND seq < {mark}"
    args: list[object] = [tenant, before or NEWEST]
    for column, value in filters.items():
        if value is not None:
            sql += f" AND {column} = {mark}"
            args.append(value)
    sql += f" ORDER BY seq DESC LIMIT {mark}"
    args.append(limit + 1)
    return sql, args


def next_cursor(rows: Sequence[Sequence[object]], limit: int) -> int:
    """Where the next page starts (`before`), or 0 when this one is the last."""
    if len(rows) <= limit:
        return 0
    seq = rows[limit - 1][0]
    assert isinstance(seq, int), seq
    return seq
