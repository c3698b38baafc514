# Sourced by scripts/run and scripts/test: makes Redis and PostgreSQL answer at REDIS_URL and
# DATABASE_URL. Installs them from the OS packages when missing, starts them in a local data
# folder (.data/) when nothing answers, and `services_stop` stops only what it started.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${TEAMCHAT_DATA:-$ROOT/.data}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL=${DATABASE_URL:-postgres://teamchat:teamchat@127.0.0.1:5432/teamchat}
STARTED_REDIS=""
STARTED_PG=""
STARTED_CLUSTER=""
# The local Redis Cluster the tests also run on (cluster_up): 3 masters and 3 replicas on
# loopback ports CLUSTER_PORT .. CLUSTER_PORT+5.
CLUSTER_PORT=${CLUSTER_PORT:-7100}

log() { printf '\033[1m[services]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# url_part URL FIELD: host, port, user, password or db of a redis:// or postgres:// URL.
url_part() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
default = 6379 if u.scheme.startswith("redis") else 5432
print({"host": u.hostname or "127.0.0.1", "port": u.port or default, "user": u.username or "",
       "password": u.password or "", "db": u.path.lstrip("/")}[sys.argv[2]])
PY
}

services_install() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || need+=(postgresql)
  command -v psql >/dev/null || need+=(postgresql-client)
  # Prometheus evaluates the Grafana dashboard's queries in the tests.
  command -v prometheus >/dev/null || need+=(prometheus)
  # The balancer in front of the gateways (deploy/haproxy), run by the tests.
  command -v haproxy >/dev/null || need+=(haproxy)
  # The TLS tests make a throwaway CA with it.
  command -v openssl >/dev/null || need+=(openssl)
  apt_install "${need[@]}"
}

# apt_install PACKAGE...: installs OS packages (none: nothing to do).
apt_install() {
  [ $# -eq 0 ] && return 0
  log "installing $* from the OS packages"
  # Keep the packages' own services from starting: this script runs what it needs.
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
  fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
  [ -n "$policy" ] && as_root rm -f "$policy"
  return 0
}

# PONG, not just any answer: while Redis loads its AOF it answers LOADING errors.
redis_answers() { [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = "PONG" ]; }

services_start_redis() {
  if redis_answers; then
    log "Redis answers at $REDIS_URL"
    return
  fi
  local port
  port=$(url_part "$REDIS_URL" port)
  mkdir -p "$DATA/redis"
  log "starting Redis on 127.0.0.1:$port (data in $DATA/redis, AOF on)"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$DATA/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$DATA/redis/redis.pid" --logfile "$DATA/redis/redis.log"
  for _ in $(seq 600); do redis_answers && break; sleep 0.1; done
  redis_answers || { log "Redis did not start; see $DATA/redis/redis.log"; return 1; }
  STARTED_REDIS=$port
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
pg_run() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_answers() { pg_isready -q -h "$(url_part "$DATABASE_URL" host)" -p "$(url_part "$DATABASE_URL" port)"; }

services_start_postgres() {
  local host port user password db bin
  host=$(url_part "$DATABASE_URL" host)
  port=$(url_part "$DATABASE_URL" port)
  user=$(url_part "$DATABASE_URL" user)
  password=$(url_part "$DATABASE_URL" password)
  db=$(url_part "$DATABASE_URL" db)
  if pg_answers; then
    log "PostgreSQL answers at $host:$port"
  else
    bin=$(pg_bin)
    local pgdata=$DATA/pg
    mkdir -p "$DATA"
    # As root the server runs as postgres, which must reach the folder (a checkout under
    # /root is not reachable): fall back to a folder under /var/tmp then.
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DATA"; then
      pgdata=/var/tmp/teamchat-pg-$port
    fi
    if [ ! -f "$pgdata/PG_VERSION" ]; then
      log "initialising PostgreSQL in $pgdata"
      mkdir -p "$pgdata"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$pgdata"
      pg_run "$bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    log "starting PostgreSQL on 127.0.0.1:$port"
    pg_run "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=500" \
      start >/dev/null
    STARTED_PG=$pgdata
  fi
  # The role and database of DATABASE_URL (the role may create databases: tests make their own).
  if ! PGPASSWORD=$password psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    log "creating role $user and database $db"
    psql -h "$host" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qc \
      "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN
         CREATE ROLE \"$user\" LOGIN CREATEDB PASSWORD '$password'; END IF; END\$\$;" \
      || { log "cannot create role $user: set DATABASE_URL to a database you can use"; return 1; }
    psql -h "$host" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE \"$db\" OWNER \"$user\"" 2>/dev/null || true
  fi
  PGPASSWORD=$password psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null \
    || { log "cannot connect to $DATABASE_URL"; return 1; }
}

cluster_ports() { seq "$CLUSTER_PORT" $((CLUSTER_PORT + 5)); }

# cluster_answers [PORT]: whether the cluster node at PORT (CLUSTER_PORT) says its cluster
# is ok.
cluster_answers() {
  [ "$(redis-cli -p "${1:-$CLUSTER_PORT}" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')" = "cluster_state:ok" ]
}

# Starts a local Redis Cluster (3 masters, 3 replicas, AOF on, data in .data/cluster/)
# unless one answers at CLUSTER_PORT, and exports its nodes as TEST_REDIS_CLUSTER_URLS
# for the tests that run on it (not REDIS_CLUSTER_URLS, which every binary would read).
cluster_up() {
  local port urls=()
  for port in $(cluster_ports); do urls+=("redis://127.0.0.1:$port"); done
  export TEST_REDIS_CLUSTER_URLS
  TEST_REDIS_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")
  if cluster_answers; then
    log "a Redis Cluster answers at 127.0.0.1:$CLUSTER_PORT"
    return
  fi
  log "starting a Redis Cluster on 127.0.0.1:$CLUSTER_PORT-$((CLUSTER_PORT + 5)) (data in $DATA/cluster)"
  STARTED_CLUSTER=1
  cluster_create "$CLUSTER_PORT" 3 1
}

# cluster_create FIRST_PORT MASTERS REPLICAS: starts MASTERS × (1 + REPLICAS) empty nodes
# on loopback ports from FIRST_PORT and makes them one cluster, REPLICAS replicas per
# master. A single master without replicas gets every slot itself (redis-cli's create
# needs three masters).
cluster_create() {
  local first=$1 masters=$2 replicas=$3 port nodes=()
  local last=$((first + masters * (1 + replicas) - 1))
  for port in $(seq "$first" "$last"); do
    # A cluster is created from empty nodes: what an earlier run left is thrown away.
    rm -rf "$DATA/cluster/$port"
    mkdir -p "$DATA/cluster/$port"
    cluster_node_start "$port"
  done
  for port in $(seq "$first" "$last"); do
    for _ in $(seq 100); do
      [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && break
      sleep 0.1
    done
    nodes+=("127.0.0.1:$port")
  done
  if [ "$masters" = 1 ] && [ "$replicas" = 0 ]; then
    redis-cli -p "$first" cluster addslotsrange 0 16383 >/dev/null
  else
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes \
      >"$DATA/cluster/create-$first.log" 2>&1 \
      || { log "creating the cluster failed; see $DATA/cluster/create-$first.log"; return 1; }
  fi
  for _ in $(seq 100); do cluster_answers "$first" && break; sleep 0.1; done
  cluster_answers "$first" || { log "the cluster at $first did not become ready"; return 1; }
}

# cluster_node_start PORT: starts the cluster node of PORT from its folder (its nodes.conf
# and AOF, if any: the failover test restarts a killed master this way).
cluster_node_start() {
  local port=$1
  redis-server --port "$port" --bind 127.0.0.1 --dir "$DATA/cluster/$port" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$DATA/cluster/$port/redis.pid" \
    --logfile "$DATA/cluster/$port/redis.log"
}

# cluster_stop [FIRST_PORT NODES]: stops the nodes of a cluster (CLUSTER_PORT's six).
cluster_stop() {
  local port
  for port in $(seq "${1:-$CLUSTER_PORT}" $((${1:-$CLUSTER_PORT} + ${2:-6} - 1))); do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
}

services_up() {
  services_install
  services_start_redis
  services_start_postgres
}

services_stop() {
  if [ -n "$STARTED_CLUSTER" ]; then
    log "stopping the Redis Cluster it started"
    cluster_stop
  fi
  if [ -n "$STARTED_REDIS" ]; then
    log "stopping the Redis it started"
    redis-cli -p "$STARTED_REDIS" shutdown nosave >/dev/null 2>&1 || true
  fi
  if [ -n "$STARTED_PG" ]; then
    log "stopping the PostgreSQL it started"
    pg_run "$(pg_bin)/pg_ctl" -D "$STARTED_PG" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
