#!/usr/bin/env bash
# Starts etcd and a real kube-apiserver on loopback, for tests: no kubelet, no
# controller manager, no scheduler. It documents (and proves) the flag set
# that the Rust test harness uses.
#
#   tests/kube/start-local.sh DIR
#
# DIR (created if missing; it must not hold an earlier run's etcd data) gets
# the etcd data, the keys, the logs and a kubeconfig. On success it prints on
# stdout, everything else going to stderr:
#
#   PIDS=<etcd pid> <kube-apiserver pid>
#   KUBECONFIG=DIR/kubeconfig
#
# and leaves both running: the caller stops them by those pids and removes
# DIR. Stop kube-apiserver first, then etcd: SIGKILL is fine (the data is
# thrown away); with SIGTERM, kube-apiserver takes about 3 s, and if etcd goes
# first kube-apiserver keeps retrying it for minutes before it exits.
#
# If the API server is not ready within $KUBE_START_TIMEOUT seconds (default
# 60), it prints the end of the log, stops what it started and exits non-zero.
#
# Services get cluster IPs from $KUBE_SERVICE_CIDR (default 10.96.0.0/16);
# tests whose pods send traffic to a service VIP pick a range their network
# namespaces route (inside 198.18.0.0/15).
#
# The binaries are $KUBE_APISERVER and $ETCD when both are set, otherwise
# whatever tests/kube/install.sh prints (it builds them on first use).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[kube/start-local] %s\n' "$*" >&2; }
die() {
    printf '[kube/start-local] error: %s\n' "$*" >&2
    exit 1
}

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: $0 DIR"
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
[ ! -e "$dir/etcd" ] || die "$dir already holds etcd data from an earlier run; use a fresh directory"
timeout_s="${KUBE_START_TIMEOUT:-60}"
service_cidr="${KUBE_SERVICE_CIDR:-10.96.0.0/16}"

for tool in curl openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# ---- binaries -------------------------------------------------------------
if [ -z "${KUBE_APISERVER:-}" ] || [ -z "${ETCD:-}" ]; then
    while IFS='=' read -r key value; do
        case "$key" in
        KUBE_APISERVER) KUBE_APISERVER="$value" ;;
        ETCD) ETCD="$value" ;;
        esac
    done < <("$here/install.sh")
fi
[ -x "${KUBE_APISERVER:-}" ] || die "no kube-apiserver binary (KUBE_APISERVER='${KUBE_APISERVER:-}')"
[ -x "${ETCD:-}" ] || die "no etcd binary (ETCD='${ETCD:-}')"

# ---- ports ------------------------------------------------------------------
# Free loopback ports, below Linux's ephemeral range (32768-60999) so that no
# outgoing connection takes one between this check and the bind.
taken_ports=()
free_port() {
    local p tries=0
    while [ $tries -lt 200 ]; do
        tries=$((tries + 1))
        p=$((20000 + RANDOM % 12000))
        [[ " ${taken_ports[*]-} " == *" $p "* ]] && continue
        # A successful connect means something listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "found no free loopback port"
}
# Another process may bind a port between this check and the bind (parallel
# tests start API servers at the same moment): a start that fails with
# "address already in use" is retried on fresh ports, up to $bind_tries times.
bind_tries=5
bind_clash() { grep -q 'address already in use' "$1" 2>/dev/null; }
starts=1

# ---- keys and credentials -------------------------------------------------
mkdir -p "$dir/pki" "$dir/certs"
chmod 700 "$dir/pki"
# Service-account token signing key (ES256). The same file verifies tokens.
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/sa.key" 2>/dev/null ||
    die "openssl could not generate the service-account key"
admin_token="$(openssl rand -hex 32)"
# token,user,uid,"groups": system:masters passes every RBAC check.
printf '%s,admin,admin,"system:masters"\n' "$admin_token" >"$dir/pki/tokens.csv"
chmod 600 "$dir/pki/tokens.csv"

started=()
# On failure only: SIGKILL, kube-apiserver first. (SIGTERM is slower, and
# SIGTERM to etcd before kube-apiserver has gone leaves kube-apiserver
# retrying etcd for minutes before it exits.)
stop_started() {
    local i pid
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        pid="${started[$i]}"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
fail() { # message, log file
    printf '[kube/start-local] error: %s\n' "$1" >&2
    if [ -f "$2" ]; then
        printf '[kube/start-local] last lines of %s:\n' "$2" >&2
        tail -n 30 "$2" >&2
    fi
    stop_started
    exit 1
}
# After NAME (pid PID, the last of $started, log LOG) exited: starts it again
# with START on other ports if a port clash killed it, else fails.
restart_after_clash() { # name, pid, log, start
    wait "$2" 2>/dev/null || true
    started=("${started[@]:0:${#started[@]}-1}")
    if bind_clash "$3" && [ "$starts" -lt "$bind_tries" ]; then
        log "a port of $1 was taken between the check and its bind; trying other ports"
        starts=$((starts + 1))
        "$4"
        return 0
    fi
    fail "$1 exited" "$3"
}

# ---- etcd -------------------------------------------------------------------
start_ns="$(date +%s%N)"
# --unsafe-no-fsync: the data is thrown away after the test; fsync would only
# slow a loaded machine down.
# Started detached, every descriptor redirected: a caller that reads this
# script's stdout to its end must not wait for etcd's.
start_etcd() {
    etcd_client_port="$(free_port)"
    taken_ports+=("$etcd_client_port")
    etcd_peer_port="$(free_port)"
    taken_ports+=("$etcd_peer_port")
    etcd_url="http://127.0.0.1:$etcd_client_port"
    rm -rf "$dir/etcd"
    mkdir -p "$dir/etcd"
    chmod 700 "$dir/etcd"
    setsid "$ETCD" \
        --name=trellis-test \
        --data-dir="$dir/etcd" \
        --listen-client-urls="$etcd_url" \
        --advertise-client-urls="$etcd_url" \
        --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster="trellis-test=http://127.0.0.1:$etcd_peer_port" \
        --unsafe-no-fsync \
        --log-level=warn \
        </dev/null >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!
    started=("$etcd_pid")
}

deadline=$((SECONDS + timeout_s))
start_etcd
until curl -fsS --max-time 2 "$etcd_url/health" 2>/dev/null | grep -q '"health":"true"'; do
    if ! kill -0 "$etcd_pid" 2>/dev/null; then
        restart_after_clash etcd "$etcd_pid" "$dir/etcd.log" start_etcd
        continue
    fi
    [ $SECONDS -lt $deadline ] || fail "etcd was not healthy within ${timeout_s}s" "$dir/etcd.log"
    sleep 0.2
done

# ---- kube-apiserver -------------------------------------------------------
# --advertise-address=127.0.0.1: otherwise it picks a host interface's address
#   (and fails where there is none, as in a fresh network namespace).
# --endpoint-reconciler-type=none: the reconciler would try to publish the
#   loopback address as the endpoint of the `kubernetes` Service, which
#   Endpoints validation rejects.
# --authorization-mode=RBAC: the admin token is in system:masters (bypasses
#   RBAC); everything else, service accounts included, needs real RBAC rules.
# --cert-dir: it generates a self-signed serving certificate (for localhost and
#   127.0.0.1) there; certs/apiserver.crt also serves as the kubeconfig's CA.
# There is no controller manager: nothing creates the `default` service
# account of a namespace, deletes namespaces, or fills EndpointSlices; tests
# do what they need themselves.
start_apiserver() {
    apiserver_port="$(free_port)"
    taken_ports+=("$apiserver_port")
    server="https://127.0.0.1:$apiserver_port"
    setsid "$KUBE_APISERVER" \
        --etcd-servers="$etcd_url" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$apiserver_port" \
        --cert-dir="$dir/certs" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$dir/pki/sa.key" \
        --service-account-signing-key-file="$dir/pki/sa.key" \
        --service-cluster-ip-range="$service_cidr" \
        --authorization-mode=RBAC \
        --token-auth-file="$dir/pki/tokens.csv" \
        --endpoint-reconciler-type=none \
        </dev/null >"$dir/apiserver.log" 2>&1 &
    apiserver_pid=$!
    started=("$etcd_pid" "$apiserver_pid")
}

start_apiserver
until [ "$(curl -ksS --max-time 2 -H "Authorization: Bearer $admin_token" \
    "$server/readyz" 2>/dev/null)" = "ok" ]; do
    if ! kill -0 "$apiserver_pid" 2>/dev/null; then
        restart_after_clash kube-apiserver "$apiserver_pid" "$dir/apiserver.log" start_apiserver
        continue
    fi
    kill -0 "$etcd_pid" 2>/dev/null || fail "etcd exited" "$dir/etcd.log"
    [ $SECONDS -lt $deadline ] ||
        fail "kube-apiserver was not ready (/readyz) within ${timeout_s}s" "$dir/apiserver.log"
    sleep 0.2
done

# ---- kubeconfig -------------------------------------------------------------
ca="$dir/certs/apiserver.crt"
[ -f "$ca" ] || fail "kube-apiserver wrote no $ca" "$dir/apiserver.log"
# Refuse to hand out a kubeconfig whose CA does not verify the server.
curl -fsS --max-time 5 --cacert "$ca" -H "Authorization: Bearer $admin_token" \
    "$server/readyz" >/dev/null 2>&1 ||
    fail "$ca does not verify $server" "$dir/apiserver.log"
umask 077
cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: trellis-test
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: trellis-test
  context:
    cluster: trellis-test
    user: admin
current-context: trellis-test
EOF

log "etcd (pid $etcd_pid) at $etcd_url, kube-apiserver (pid $apiserver_pid) at $server, ready $(( ($(date +%s%N) - start_ns) / 1000000 )) ms after etcd's start"
printf 'PIDS=%s %s\n' "$etcd_pid" "$apiserver_pid"
printf 'KUBECONFIG=%s\n' "$dir/kubeconfig"
