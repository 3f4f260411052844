"""SQL of PostgreSQL maintenance (VACUUM, REINDEX) and the parsing of its answers.

Sizes and tuple counts come from ``pg_stat_user_tables``, ``pg_table_size`` and
``pg_relation_size``. Bloat is an **estimate**: the well-known pgexperts/ioguix "table bloat"
and "btree bloat" queries (github.com/ioguix/pgsql-bloat-estimation), which compare the pages a
relation has with the pages its rows would need according to the planner statistics
(``pg_stats`` average widths and null fractions, ``reltuples``, ``relpages``). They need
statistics and are as fresh as the last VACUUM/ANALYZE: a table or index never analyzed, or
with columns without statistics, is reported with no bloat. They read only the catalogs, so
they never wait for a lock.

Every query answers with text-convertible columns, so the same parsing reads psycopg rows and
``psql -tA`` rows. A table scope is either every user table (``ALL_TABLES``) or a list of OIDs
the server resolved (``oid_scope``): no name from the inventory is pasted into SQL unquoted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from connectors.postgres.sql import Row, literal, quote_table
from opsflow.errors import PermanentError

MA = "case when version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64' then 8 else 4 end"
BS = "current_setting('block_size')::numeric"

ALL_TABLES = (
    "(select u.relid from pg_stat_user_tables u join pg_class uc on uc.oid = u.relid "
    "where uc.relkind in ('r', 'm') and u.schemaname !~ '^pg_temp')"
)
"""Every user table and materialized view (not partitioned parents: their partitions are
listed themselves; not other sessions' temporary tables)."""

LOCKED = (
    "(select l.relation from pg_locks l where l.locktype = 'relation' "
    "and l.mode = 'AccessExclusiveLock' "
    "and l.database = (select oid from pg_database where datname = current_database()))"
)
"""Relations some session holds or waits for ACCESS EXCLUSIVE on: reading their size would
wait (``pg_relation_size`` takes ACCESS SHARE), so their figures come from ``pg_class``."""

MAINTAINABLE_KINDS = ("r", "m")
SERVER_VERSION_SQL = "select current_setting('server_version_num')::int"
DATABASE_SIZE_SQL = "select pg_database_size(current_database())"

LOCK_TIMEOUT = "55P03"  # lock_not_available: lock_timeout passed
QUERY_CANCELED = "57014"  # statement_timeout passed (or a cancel)
_SQLSTATE = re.compile(r"\b(?:ERROR|FATAL):\s+([0-9A-Z]{5}):\s*(.*)$", re.MULTILINE)


def oid_scope(oids: Sequence[int]) -> str:
    """A table scope of server-resolved OIDs (integers only)."""
    if not oids:
        return "(select null::oid where false)"
    return "(" + ", ".join(str(int(oid)) for oid in oids) + ")"


def resolve_tables_sql(names: Sequence[str]) -> str:
    """``(name, oid or '', relkind or '')`` per requested ``schema.table`` name."""
    values = ", ".join(f"({literal(name)}, {literal(quote_table(name))})" for name in names)
    return (
        "select v.n, coalesce(c.oid::text, ''), coalesce(c.relkind::text, '') "
        f"from (values {values}) v(n, q) left join pg_class c on c.oid = to_regclass(v.q) "
        "order by v.n"
    )


def table_stats_sql(scope: str) -> str:
    """``(oid, schema.table, quoted name, live, dead, table bytes, index bytes)``; the sizes of
    a relation some session holds (or waits for) ACCESS EXCLUSIVE on come from ``relpages``."""
    return f"""\
select c.oid, n.nspname || '.' || c.relname,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
       case when c.oid in {LOCKED}
            then ((c.relpages + coalesce(t.relpages, 0)) * {BS})::bigint
            else pg_table_size(c.oid) end,
       case when c.oid in {LOCKED} or exists (select 1 from pg_index xi
                                              where xi.indrelid = c.oid
                                                and xi.indexrelid in {LOCKED})
            then (coalesce((select sum(ic.relpages) from pg_index xi
                            join pg_class ic on ic.oid = xi.indexrelid
                            where xi.indrelid = c.oid), 0) * {BS})::bigint
            else pg_indexes_size(c.oid) end
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_class t on t.oid = c.reltoastrelid
left join pg_stat_user_tables s on s.relid = c.oid
where c.oid in {scope}
order by 2"""


def table_bloat_sql(scope: str) -> str:
    """``(table oid, estimated bloat bytes)`` (ioguix table_bloat.sql, fillfactor-aware)."""
    return f"""\
select tblid, (greatest(tblpages - est_tblpages_ff, 0) * bs)::bigint
from (
  select tblid, bs, tblpages,
         ceil(reltuples / ((bs - page_hdr) * fillfactor / (tpl_size * 100)))
           + ceil(toasttuples / 4) as est_tblpages_ff
  from (
    select tblid, bs, page_hdr, fillfactor, reltuples, toasttuples,
           heappages + toastpages as tblpages,
           (4 + tpl_hdr_size + tpl_data_size + (2 * ma)
             - case when tpl_hdr_size % ma = 0 then ma else tpl_hdr_size % ma end
             - case when ceil(tpl_data_size)::int % ma = 0 then ma
                    else ceil(tpl_data_size)::int % ma end) as tpl_size
    from (
      select tbl.oid as tblid, tbl.reltuples,
             tbl.relpages as heappages, coalesce(toast.relpages, 0) as toastpages,
             greatest(coalesce(toast.reltuples, 0), 0) as toasttuples,
             coalesce(substring(array_to_string(tbl.reloptions, ' ')
                                from 'fillfactor=([0-9]+)')::smallint, 100) as fillfactor,
             {BS} as bs, {MA} as ma, 24 as page_hdr,
             23 + case when max(coalesce(s.null_frac, 0)) > 0
                       then (7 + count(s.attname)) / 8 else 0::int end as tpl_hdr_size,
             sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) as tpl_data_size,
             bool_or(att.atttypid = 'pg_catalog.name'::regtype)
               or sum(case when att.attnum > 0 then 1 else 0 end) <> count(s.attname)
               or tbl.reltuples < 0 as is_na
      from pg_attribute att
      join pg_class tbl on att.attrelid = tbl.oid
      join pg_namespace ns on ns.oid = tbl.relnamespace
      left join pg_stats s on s.schemaname = ns.nspname and s.tablename = tbl.relname
                          and s.inherited = false and s.attname = att.attname
      left join pg_class toast on toast.oid = tbl.reltoastrelid
      where not att.attisdropped and tbl.oid in {scope}
      group by tbl.oid, tbl.reltuples, tbl.reloptions, toast.oid, toast.reltuples
    ) s1
    where not is_na
  ) s2
) s3"""


def index_sizes_sql(scope: str) -> str:
    """``(index oid, table oid, schema.index, schema.table, quoted index name, bytes)``: valid
    btree indexes of the tables in ``scope``."""
    return f"""\
select x.indexrelid, x.indrelid, n.nspname || '.' || ci.relname, tn.nspname || '.' || ct.relname,
       quote_ident(n.nspname) || '.' || quote_ident(ci.relname),
       case when x.indexrelid in {LOCKED} then (ci.relpages * {BS})::bigint
            else pg_relation_size(x.indexrelid) end
from pg_index x
join pg_class ci on ci.oid = x.indexrelid
join pg_namespace n on n.oid = ci.relnamespace
join pg_class ct on ct.oid = x.indrelid
join pg_namespace tn on tn.oid = ct.relnamespace
where ci.relam = (select oid from pg_am where amname = 'btree')
  and x.indisvalid and x.indrelid in {scope}
order by 3"""


def btree_bloat_sql(scope: str) -> str:
    """``(index oid, estimated bloat bytes, bloat %)`` (ioguix btree_bloat.sql)."""
    return f"""\
select idxoid,
       case when relpages > est_pages_ff then (bs * (relpages - est_pages_ff))::bigint
            else 0 end,
       case when relpages > est_pages_ff
            then round((100 * (relpages - est_pages_ff) / relpages)::numeric, 1) else 0 end
from (
  select idxoid, bs, relpages,
         coalesce(1 + ceil(reltuples / floor((bs - pageopqdata - pagehdr) * fillfactor
                                              / (100 * (4 + nulldatahdrwidth)::float))), 0)
           as est_pages_ff
  from (
    select idxoid, bs, relpages, reltuples, fillfactor, pagehdr, pageopqdata,
           (index_tuple_hdr_bm + maxalign
              - case when index_tuple_hdr_bm % maxalign = 0 then maxalign
                     else index_tuple_hdr_bm % maxalign end
              + nulldatawidth + maxalign
              - case when nulldatawidth = 0 then 0
                     when nulldatawidth::integer % maxalign = 0 then maxalign
                     else nulldatawidth::integer % maxalign end)::numeric as nulldatahdrwidth
    from (
      select i.idxoid, i.reltuples, i.relpages, i.fillfactor,
             {BS} as bs, {MA} as maxalign, 24 as pagehdr, 16 as pageopqdata,
             case when max(coalesce(s.null_frac, 0)) = 0 then 8
                  else 8 + ((32 + 8 - 1) / 8) end as index_tuple_hdr_bm,
             sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024)) as nulldatawidth,
             max(case when i.atttypid = 'pg_catalog.name'::regtype then 1 else 0 end) > 0
               as is_na
      from (
        select ic.idxoid, ic.reltuples, ic.relpages, ic.fillfactor, ct.relnamespace,
               coalesce(a1.attname, a2.attname) as attname,
               coalesce(a1.atttypid, a2.atttypid) as atttypid,
               case when a1.attnum is null then ic.idxname else ct.relname end as attrelname
        from (
          select idxname, reltuples, relpages, tbloid, idxoid, fillfactor, indkey,
                 generate_series(1, indnatts) as attpos
          from (
            select ci.relname as idxname, ci.reltuples,
                   ci.relpages,
                   x.indrelid as tbloid, x.indexrelid as idxoid,
                   coalesce(substring(array_to_string(ci.reloptions, ' ')
                                      from 'fillfactor=([0-9]+)')::smallint, 90) as fillfactor,
                   x.indnatts,
                   string_to_array(textin(int2vectorout(x.indkey)), ' ')::int[] as indkey
            from pg_index x
            join pg_class ci on ci.oid = x.indexrelid
            where ci.relam = (select oid from pg_am where amname = 'btree')
              and x.indisvalid and ci.reltuples >= 0 and ci.relpages > 0
              and x.indrelid in {scope}
          ) idx_data
        ) ic
        join pg_class ct on ct.oid = ic.tbloid
        left join pg_attribute a1 on ic.indkey[ic.attpos] <> 0 and a1.attrelid = ic.tbloid
                                 and a1.attnum = ic.indkey[ic.attpos]
        left join pg_attribute a2 on ic.indkey[ic.attpos] = 0 and a2.attrelid = ic.idxoid
                                 and a2.attnum = ic.attpos
      ) i
      join pg_namespace n on n.oid = i.relnamespace
      join pg_stats s on s.schemaname = n.nspname and s.tablename = i.attrelname
                     and s.attname = i.attname
      group by i.idxoid, i.reltuples, i.relpages, i.fillfactor
    ) rows_data_stats
    where not is_na
  ) rows_hdr_pdg_stats
) relation_stats"""


def invalid_indexes_sql(table_oid: int) -> str:
    """``(index oid, quoted schema.index)`` of the invalid indexes of one table."""
    return (
        "select x.indexrelid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
        "from pg_index x join pg_class c on c.oid = x.indexrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        f"where x.indrelid = {int(table_oid)} and not x.indisvalid order by 1"
    )


def vacuum_sql(quoted_table: str, *, full: bool = False) -> str:
    """``VACUUM (ANALYZE) t`` / ``VACUUM (FULL, ANALYZE) t``; ``quoted_table`` is the server's
    ``quote_ident(schema) || '.' || quote_ident(name)`` (``table_stats_sql``)."""
    return f"vacuum ({'full, ' if full else ''}analyze) {quoted_table}"


def reindex_sql(quoted_index: str) -> str:
    return f"reindex index concurrently {quoted_index}"


def drop_index_sql(quoted_index: str) -> str:
    return f"drop index concurrently if exists {quoted_index}"


def timeout_settings(lock_timeout_ms: int, statement_timeout_ms: int) -> list[str]:
    """The ``SET`` statements every maintenance statement runs after (one session)."""
    return [
        f"set lock_timeout = {int(lock_timeout_ms)}",
        f"set statement_timeout = {int(statement_timeout_ms)}",
    ]


def psql_error(stderr: str) -> tuple[str, str] | None:
    """``(SQLSTATE, message)`` of the first error in ``psql -v VERBOSITY=verbose`` stderr."""
    match = _SQLSTATE.search(stderr)
    return (match.group(1), match.group(2).strip()) if match else None


# ----- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    oid: int
    name: str
    quoted: str
    live_tuples: int
    dead_tuples: int
    table_bytes: int
    index_bytes: int


@dataclass(frozen=True)
class IndexRow:
    oid: int
    table_oid: int
    name: str
    table: str
    quoted: str
    bytes: int


def _width(rows: Sequence[Row], width: int, what: str) -> Sequence[Row]:
    for row in rows:
        if len(row) != width:
            raise PermanentError(
                f"unexpected answer to the {what} query: a row of {len(row)} column(s) "
                f"instead of {width} (a name containing '|'?)"
            )
    return rows


def parse_table_rows(rows: Sequence[Row]) -> list[TableRow]:
    return [
        TableRow(int(r[0]), str(r[1]), str(r[2]), *(int(v) for v in r[3:7]))
        for r in _width(rows, 7, "table statistics")
    ]


def parse_index_rows(rows: Sequence[Row]) -> list[IndexRow]:
    return [
        IndexRow(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]))
        for r in _width(rows, 6, "index sizes")
    ]


def parse_table_bloat(rows: Sequence[Row]) -> dict[int, int]:
    return {int(r[0]): max(int(r[1]), 0) for r in _width(rows, 2, "table bloat")}


def parse_index_bloat(rows: Sequence[Row]) -> dict[int, tuple[int, float]]:
    return {
        int(r[0]): (max(int(r[1]), 0), max(float(r[2]), 0.0))
        for r in _width(rows, 3, "btree bloat")
    }


def parse_resolved(rows: Sequence[Row]) -> dict[str, tuple[int | None, str]]:
    """``{name: (oid or None, relkind)}`` from ``resolve_tables_sql``."""
    return {
        str(r[0]): (int(r[1]) if str(r[1]).strip() else None, str(r[2]).strip())
        for r in _width(rows, 3, "table names")
    }
