"""The store factory: the URL scheme picks SQLite or PostgreSQL.

`sqlite:///path/file.db` or `postgresql://...`. Kept apart from the
interface (`store.py`) so the core never imports a database driver.
"""

from __future__ import annotations

from collections.abc import Mapping

from .catalog import DEFAULT_BOARD, BoardSpec
from .store import Store


async def open_store(
    url: str,
    *,
    boards: Mapping[str, BoardSpec] | None = None,
    default_board: str = DEFAULT_BOARD,
    timeout_s: float = 5.0,
    pool_min: int = 1,
    pool_max: int = 4,
    sqlite_synchronous: str = "FULL",
) -> Store:
    """Open (and migrate) the store named by `url`'s scheme.

    `boards` are the boards batches may write; `default_board` receives the
    scores of a database made before boards existed.
    """
    specs = dict(boards or {})
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        return await SqliteStore.open(
            url,
            boards=specs,
            default_board=default_board,
            timeout_s=timeout_s,
            synchronous=sqlite_synchronous,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return await PostgresStore.open(
            url,
            boards=specs,
            default_board=default_board,
            timeout_s=timeout_s,
            pool_min=pool_min,
            pool_max=pool_max,
        )
    raise ValueError(
        f"unsupported database URL scheme in {url.split(':', 1)[0]!r}; use sqlite:// or postgresql://"
    )
