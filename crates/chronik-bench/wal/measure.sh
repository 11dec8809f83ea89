#!/bin/bash
# WAL records and bytes, and buffers, per command, counted rather than timed
# (docs/benchmarks.md, "The command's WAL, record by record").
#
#   measure.sh DB SCRIPT CLIENTS TRANSACTIONS
#
# Runs SCRIPT (a pgbench script: command-next.sql, command-first.sql, ...) in DB (a store
# seeded by seed.sql) with pgbench, then counts with pg_waldump the records of that range
# that touch DB's relations or commit its transactions (so other databases' writes on the
# cluster do not count), by kind, and the buffers DB's tables and indexes were asked for
# (pg_statio_user_tables). Needs PGHOST/PGPORT/PGUSER for a superuser, read access to the
# data directory's pg_wal, and a physical replication slot that holds the WAL meanwhile:
#   SELECT pg_create_physical_replication_slot('perf_waldump', true);
# Bytes are the records' own, without full-page images (a checkpoint during the run adds
# those, counted apart).
set -euo pipefail
DB=$1; SCRIPT=$2; CLIENTS=$3; TXNS=$4
BIN=${PGBIN:-$(pg_config --bindir)}
P="psql -d $DB -Atq"
WAL=$($P -c "SHOW data_directory")/pg_wal
OID=$($P -c "SELECT oid FROM pg_database WHERE datname = current_database()")
BUF="SELECT sum(coalesce(heap_blks_hit, 0) + coalesce(heap_blks_read, 0)
              + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0)
              + coalesce(toast_blks_hit, 0) + coalesce(toast_blks_read, 0)
              + coalesce(tidx_blks_hit, 0) + coalesce(tidx_blks_read, 0))
       FROM pg_statio_user_tables"
OUT=$(mktemp -d)
$P -c "SELECT pg_stat_force_next_flush()" > /dev/null
B0=$($P -c "$BUF"); L0=$($P -c "SELECT pg_current_wal_insert_lsn()")
"$BIN/pgbench" -n -c "$CLIENTS" -j 2 -t "$TXNS" -f "$SCRIPT" "$DB" > "$OUT/pgbench.out"
L1=$($P -c "SELECT pg_current_wal_insert_lsn()")
# pgbench's sessions report their statistics as they end: wait for them, then read.
sleep 1.5
B1=$($P -c "$BUF")
N=$((CLIENTS * TXNS))
"$BIN/pg_waldump" -p "$WAL" -s "$L0" -e "$L1" 2> /dev/null > "$OUT/dump.txt" || true
awk -v db="/$OID/" 'index($0, db) { for (i = 1; i <= NF; i++) if ($i == "tx:") { x = $(i + 1); sub(",", "", x); print x } }' \
    "$OUT/dump.txt" | sort -u > "$OUT/xids.txt"
awk -v db="/$OID/" -v n="$N" -v b0="$B0" -v b1="$B1" '
  NR == FNR { ours[$1] = 1; next }
  { t = ""; for (i = 1; i <= NF; i++) if ($i == "tx:") { t = $(i + 1); sub(",", "", t) } }
  index($0, db) || ($0 ~ /rmgr: Transaction/ && (t in ours)) {
    split($0, a, "rec/tot\\):"); split(a[2], b, "/"); rec = b[1] + 0; tot = b[2] + 0
    d = $0; sub(/.*desc: /, "", d); split(d, dd, " "); k = $2 " " dd[1]
    count[k]++; bytes[k] += rec; records++; all += rec; with += tot; if ($0 ~ /FPW/) images++ }
  END {
    for (k in count) printf "  %-24s %8.3f records %7.1f bytes per command\n", k, count[k] / n, bytes[k] / n
    printf "per command: %.2f WAL records, %.0f WAL bytes without page images (%.0f with %d images in all); %.1f buffers\n",
      records / n, all / n, with / n, images, (b1 - b0) / n }' "$OUT/xids.txt" "$OUT/dump.txt" | sort -k3 -g -r
grep -E "^tps" "$OUT/pgbench.out"
rm -rf "$OUT"
