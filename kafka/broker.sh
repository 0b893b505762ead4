#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on 127.0.0.1
# for the Kafka test tier and local runs. Jars come from Maven Central once (kafka/pom.xml) and
# are cached in kafka/.cache/libs; state, PID file and log live in kafka/.run/.
# Usage: kafka/broker.sh start|stop|kill|status|wait|reset   (see kafka/README.md; works from any cwd)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

# Client listener port; clients bootstrap from 127.0.0.1:$QRIS_KAFKA_PORT.
PORT="${QRIS_KAFKA_PORT:-9092}"
# KRaft controller listener port (only the broker itself talks to it).
CONTROLLER_PORT="${QRIS_KAFKA_CONTROLLER_PORT:-9093}"
# SASL_SSL listener port (SCRAM-SHA-512/256 over TLS), next to the PLAINTEXT one; 0 turns it off.
SASL_SSL_PORT="${QRIS_KAFKA_SASL_SSL_PORT:-9094}"
# SCRAM user of the SASL_SSL listener; its password is generated once into $RUN_DIR/scram-password.
SCRAM_USER="${QRIS_KAFKA_SCRAM_USER:-qris}"
# PID file, generated config and broker.log.
RUN_DIR="$(abspath "${QRIS_KAFKA_RUN_DIR:-$HERE/.run}")"
# Formatted KRaft storage: metadata log and topic partitions. Deleted by `reset`.
DATA_DIR="$(abspath "${QRIS_KAFKA_DATA_DIR:-$RUN_DIR/data}")"
# Partition count of auto-created topics (faust's internal topics, topics nobody declared).
PARTITIONS="${QRIS_KAFKA_PARTITIONS:-4}"
# JVM heap of the broker.
HEAP_OPTS="${QRIS_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
# How long a new consumer group's first rebalance waits for more members (ms). 0 for the tests
# (a worker starts at once); Kafka's default is 3000, which lets workers started together share
# the partitions from the start (`bench/scale_out.py` on a production-like broker).
INITIAL_REBALANCE_DELAY_MS="${QRIS_KAFKA_INITIAL_REBALANCE_DELAY_MS:-0}"
# Seconds `start`/`wait` give the broker to answer an admin call.
READY_TIMEOUT_S="${QRIS_KAFKA_READY_TIMEOUT_S:-90}"
# Seconds `stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_S="${QRIS_KAFKA_STOP_TIMEOUT_S:-30}"

HOST=127.0.0.1
BOOTSTRAP="$HOST:$PORT"
LIBS_DIR="$HERE/.cache/libs"
PID_FILE="$RUN_DIR/broker.pid"
LOG_FILE="$RUN_DIR/broker.log"
CONFIG_FILE="$RUN_DIR/server.properties"
ADMIN_CONFIG_FILE="$RUN_DIR/admin.properties"
READY_LOG_FILE="$RUN_DIR/ready-check.log"
# TLS material of the SASL_SSL listener: tls/ca.pem is the CA clients must trust.
TLS_DIR="$RUN_DIR/tls"
SCRAM_PASSWORD_FILE="$RUN_DIR/scram-password"
# Written once the SCRAM user exists in this storage (at format, or added to older storage).
SCRAM_STAMP="$DATA_DIR/.scram-user"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

log() { printf 'broker.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

show_log_tail() {
  if [[ -f "$LOG_FILE" ]]; then
    log "last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
  fi
}

# The jars are fetched once; the stamp holds the pom's hash, so editing the pom re-fetches.
# Copying into a temporary folder first means an interrupted fetch never looks complete.
fetch_libs() {
  local stamp="$LIBS_DIR/.pom.sha256" want
  want="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn (Maven) is needed once to fetch the Kafka jars"
  log "fetching Kafka jars with Maven into $LIBS_DIR"
  local tmp="$HERE/.cache/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$HERE/.cache"
  # Debian's Maven prints colour codes even in batch mode; strip them (pipefail keeps mvn's status).
  if ! mvn -B -q -ntp -f "$HERE/pom.xml" dependency:copy-dependencies -Dlibs.dir="$tmp" \
      </dev/null 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2; then
    rm -rf "$tmp"
    die "Maven could not fetch the Kafka jars (see output above)"
  fi
  printf '%s\n' "$want" >"$tmp/.pom.sha256"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
}

# PID of our running broker, or nothing. A PID file whose process is gone or is not a
# Kafka broker (PID reused) counts as not running.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka'; then
    printf '%s\n' "$pid"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

sasl_ssl_on() { [[ "$SASL_SSL_PORT" != 0 ]]; }

# A private CA and a broker certificate it signs (SAN: 127.0.0.1 and localhost), made once with
# openssl; Kafka reads them as a PEM keystore. The SCRAM password is made once as well.
make_tls() {
  mkdir -p "$TLS_DIR"
  if [[ ! -s "$TLS_DIR/ca.pem" || ! -s "$TLS_DIR/broker-keystore.pem" ]]; then
    log "making a CA and a broker certificate in $TLS_DIR"
    command -v openssl >/dev/null || die "openssl is needed to make the SASL_SSL listener's certificates"
    local tmp="$TLS_DIR/tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=qris-guard test CA" \
      -keyout "$tmp/ca.key" -out "$tmp/ca.pem" >/dev/null 2>&1 || die "openssl could not make the CA"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$tmp/broker.key" -out "$tmp/broker.csr" >/dev/null 2>&1 || die "openssl could not make the broker key"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tmp/san.ext"
    openssl x509 -req -in "$tmp/broker.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tmp/san.ext" -out "$tmp/broker.pem" >/dev/null 2>&1 \
      || die "openssl could not sign the broker certificate"
    cat "$tmp/broker.key" "$tmp/broker.pem" "$tmp/ca.pem" >"$tmp/broker-keystore.pem"
    chmod 600 "$tmp/ca.key" "$tmp/broker.key" "$tmp/broker-keystore.pem"
    mv "$tmp/ca.key" "$tmp/ca.pem" "$tmp/broker.key" "$tmp/broker.pem" "$tmp/broker-keystore.pem" "$TLS_DIR/"
    rm -rf "$tmp"
  fi
  if [[ ! -s "$SCRAM_PASSWORD_FILE" ]]; then
    (umask 077 && openssl rand -hex 16 >"$SCRAM_PASSWORD_FILE")
  fi
}

scram_credentials() {
  local password
  password="$(cat "$SCRAM_PASSWORD_FILE")"
  printf 'SCRAM-SHA-512=[name=%s,password=%s]\n' "$SCRAM_USER" "$password"
  printf 'SCRAM-SHA-256=[name=%s,password=%s]\n' "$SCRAM_USER" "$password"
}

write_config() {
  mkdir -p "$RUN_DIR" "$DATA_DIR"
  local SASL_LISTENER="" SASL_CONFIG=""
  if sasl_ssl_on; then
    SASL_LISTENER=",SASL_SSL://$HOST:$SASL_SSL_PORT"
    SASL_CONFIG="
# SASL_SSL listener for clients as a bank runs them: SCRAM users over TLS (tls/ca.pem).
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker-keystore.pem
listener.name.sasl_ssl.ssl.client.auth=none"
  fi
  cat >"$CONFIG_FILE" <<EOF
# Generated by kafka/broker.sh on every start; edit broker.sh, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT$SASL_LISTENER
advertised.listeners=PLAINTEXT://$HOST:$PORT$SASL_LISTENER
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$DATA_DIR/logs
$SASL_CONFIG

# One node: every internal topic has a single replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests: a group's first rebalance starts at once instead of waiting 3 s for more members
# (QRIS_KAFKA_INITIAL_REBALANCE_DELAY_MS).
group.initial.rebalance.delay.ms=$INITIAL_REBALANCE_DELAY_MS
# faust creates its internal topics (leader, repartition topics) itself and may also
# touch topics nobody declared; those are created with num.partitions partitions.
auto.create.topics.enable=true
num.partitions=$PARTITIONS
delete.topic.enable=true
# Keep records whatever their timestamp: the simulator stamps records with their (past) event
# time, which the default 7-day time retention would delete at its first pass.
log.retention.ms=-1
# Tests: the log cleaner looks for work every second instead of every 15 s, so a test of what
# compaction removes (an expired tombstone) waits seconds for it.
log.cleaner.backoff.ms=1000
EOF
  cat >"$ADMIN_CONFIG_FILE" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=8000
EOF
}

format_storage() {
  if [[ -f "$DATA_DIR/logs/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$("$JAVA" -cp "$LIBS_DIR/*" kafka.tools.StorageTool random-uuid 2>>"$LOG_FILE")"
  log "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
  local scram=()
  if sasl_ssl_on; then
    local line
    while IFS= read -r line; do scram+=(--add-scram "$line"); done < <(scram_credentials)
  fi
  "$JAVA" -cp "$LIBS_DIR/*" -Dlog4j2.configurationFile="$HERE/log4j2.xml" \
    -Dqris.kafka.log.level=WARN kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG_FILE" \
    "${scram[@]}" >>"$LOG_FILE" 2>&1 \
    || { show_log_tail; die "formatting $DATA_DIR failed"; }
  if sasl_ssl_on; then
    touch "$SCRAM_STAMP"
  fi
}

# Storage formatted before the SASL_SSL listener existed has no SCRAM user: add it through the
# PLAINTEXT listener once (what --add-scram does at format time).
ensure_scram_user() {
  sasl_ssl_on || return 0
  [[ -f "$SCRAM_STAMP" ]] && return 0
  log "adding SCRAM user $SCRAM_USER to existing storage"
  local mechanism password
  password="$(cat "$SCRAM_PASSWORD_FILE")"
  for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
    "$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx128m \
      -Dlog4j2.configurationFile="$HERE/log4j2.xml" -Dqris.kafka.log.level=WARN \
      -cp "$LIBS_DIR/*" org.apache.kafka.tools.ConfigCommand --bootstrap-server "$BOOTSTRAP" \
      --command-config "$ADMIN_CONFIG_FILE" --alter --entity-type users --entity-name "$SCRAM_USER" \
      --add-config "$mechanism=[password=$password]" </dev/null >>"$LOG_FILE" 2>&1 \
      || die "could not add SCRAM user $SCRAM_USER (see $LOG_FILE)"
  done
  touch "$SCRAM_STAMP"
}

launch() {
  log "starting Kafka on $BOOTSTRAP (controller $HOST:$CONTROLLER_PORT), log $LOG_FILE"
  # setsid: the broker outlives the shell (and a Ctrl-C in it); the inner shell writes its own
  # PID and execs java, so the PID file names the JVM. 9>&- keeps the start lock out of it.
  # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dkafka.logs.dir="$RUN_DIR" \
    -Dlog4j2.configurationFile="$HERE/log4j2.xml" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >>"$LOG_FILE" 2>&1 9>&- &
  local i
  for i in $(seq 50); do
    [[ -s "$PID_FILE" ]] && return 0
    sleep 0.1
  done
  die "the broker process did not start"
}

# Ready means a real admin call (list topics) answered, not merely an open port.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT_S)) pid
  while :; do
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
      show_log_tail
      die "the broker is not running (it exited or was never started)"
    fi
    if timeout 30 "$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx128m \
        -Dlog4j2.configurationFile="$HERE/log4j2.xml" -Dqris.kafka.log.level=WARN \
        -cp "$LIBS_DIR/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG_FILE" --list \
        </dev/null >"$READY_LOG_FILE" 2>&1; then
      log "ready: $BOOTSTRAP (pid $pid)"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "last admin call output:"
      tail -n 10 "$READY_LOG_FILE" >&2 || true
      show_log_tail
      die "no admin answer from $BOOTSTRAP within ${READY_TIMEOUT_S}s"
    fi
    sleep 1
  done
}

lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/broker.lock"
  flock 9
}

cmd_start() {
  lock
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "already running (pid $pid)"
  else
    rm -f "$PID_FILE"
    fetch_libs
    port_in_use "$PORT" && die "port $PORT is taken by another process; set QRIS_KAFKA_PORT"
    port_in_use "$CONTROLLER_PORT" \
      && die "port $CONTROLLER_PORT is taken by another process; set QRIS_KAFKA_CONTROLLER_PORT"
    if sasl_ssl_on; then
      port_in_use "$SASL_SSL_PORT" \
        && die "port $SASL_SSL_PORT is taken by another process; set QRIS_KAFKA_SASL_SSL_PORT (0: no SASL_SSL)"
      make_tls
    fi
    write_config
    format_storage
    launch
  fi
  wait_ready
  if sasl_ssl_on; then
    if ! grep -q "SASL_SSL://$HOST:$SASL_SSL_PORT" "$CONFIG_FILE" 2>/dev/null; then
      log "warning: the running broker has no SASL_SSL listener on $SASL_SSL_PORT (started by an older"
      log "broker.sh or with other settings); '$0 stop' then '$0 start' adds it, keeping the data"
      return 0
    fi
    ensure_scram_user
    log "SASL_SSL: $HOST:$SASL_SSL_PORT, user $SCRAM_USER, password in $SCRAM_PASSWORD_FILE, CA $TLS_DIR/ca.pem"
  fi
}

cmd_stop() {
  lock
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "still running after ${STOP_TIMEOUT_S}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$PID_FILE"
  log "stopped"
}

# SIGKILL at once, no clean shutdown (a crashed broker, for the chaos tests): the next `start`
# recovers the logs from an unclean shutdown. Waits until the process is gone.
cmd_kill() {
  lock
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "killing pid $pid (SIGKILL)"
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$PID_FILE"
  log "killed"
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    echo "running pid=$pid bootstrap=$BOOTSTRAP data=$DATA_DIR log=$LOG_FILE"
    if sasl_ssl_on; then
      echo "sasl_ssl=$HOST:$SASL_SSL_PORT user=$SCRAM_USER password_file=$SCRAM_PASSWORD_FILE ca=$TLS_DIR/ca.pem"
    fi
  else
    echo "not running"
    return 3
  fi
}

cmd_wait() {
  [[ -d "$LIBS_DIR" ]] || die "no jars in $LIBS_DIR; run '$0 start'"
  wait_ready
}

cmd_reset() {
  cmd_stop
  log "deleting $DATA_DIR"
  rm -rf "$DATA_DIR"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  status) cmd_status ;;
  wait) cmd_wait ;;
  reset) cmd_reset ;;
  *)
    echo "usage: $0 start|stop|kill|status|wait|reset" >&2
    exit 2
    ;;
esac
