#!/usr/bin/env bash
# Start, stop or restart single-node Garage servers on loopback, one per
# region, each with its own bucket and key. Used by the test suite and for a
# three-region demo (see ops/config/three-regions.toml).
#
#   ops/garage/regions.sh start DIR BASE_PORT REGION...   # e.g. start /tmp/g 39100 in sg uk
#   ops/garage/regions.sh stop DIR                        # stops every region under DIR
#   ops/garage/regions.sh kill DIR REGION                 # SIGKILL one region (outage drill)
#   ops/garage/regions.sh restart DIR REGION              # start a stopped region again
#
# For each region, DIR/REGION holds garage.toml, the data, garage.pid, and
# coffer.toml: the [regions.REGION] block for Coffer's config, whose secret key
# is in DIR/REGION/secret (mode 0600). Ports: s3 = BASE + 10*i, rpc = +1,
# admin = +3. compression_level = "none", so that a search of the data
# directory for plaintext means something. Processes are stopped by PID only.
set -euo pipefail

GARAGE=${GARAGE:-garage}
BUCKET=coffer-backups

die() { echo "regions.sh: $*" >&2; exit 1; }

start_server() {
    local dir=$1
    "$GARAGE" -c "$dir/garage.toml" server >>"$dir/garage.log" 2>&1 &
    echo $! >"$dir/garage.pid"
    # Ready when the admin CLI answers.
    for _ in $(seq 1 100); do
        if "$GARAGE" -c "$dir/garage.toml" status >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || die "garage in $dir exited; see $dir/garage.log"
        sleep 0.1
    done
    die "garage in $dir did not come up; see $dir/garage.log"
}

start_region() {
    local root=$1 region=$2 port=$3
    local dir=$root/$region
    mkdir -p "$dir"
    chmod 700 "$dir"
    local secret_rpc admin
    secret_rpc=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    admin=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$secret_rpc"

[s3_api]
api_bind_addr = "127.0.0.1:$port"
s3_region = "garage"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
admin_token = "$admin"
EOF
    chmod 600 "$dir/garage.toml"
    start_server "$dir"
    local g=("$GARAGE" -c "$dir/garage.toml")
    local node
    node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)
    "${g[@]}" layout assign -z "$region" -c 1G "$node" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    "${g[@]}" bucket create "$BUCKET" >/dev/null
    local key
    key=$("${g[@]}" key create coffer)
    local key_id secret
    key_id=$(awk -F': *' '/^Key ID:/ {print $2}' <<<"$key")
    secret=$(awk -F': *' '/^Secret key:/ {print $2}' <<<"$key")
    [[ -n $key_id && -n $secret ]] || die "could not read the key garage created for $region"
    "${g[@]}" bucket allow --read --write --owner "$BUCKET" --key coffer >/dev/null
    (umask 077 && printf '%s\n' "$secret" >"$dir/secret")
    cat >"$dir/coffer.toml" <<EOF
[regions.$region]
store = "s3://$BUCKET"
endpoint = "http://127.0.0.1:$port"
s3_region = "garage"
access_key_id = "$key_id"
secret_access_key_file = "$dir/secret"
EOF
    echo "$region s3=http://127.0.0.1:$port pid=$(cat "$dir/garage.pid")"
}

stop_region() {
    local dir=$1 signal=$2
    [[ -f $dir/garage.pid ]] || return 0
    local pid
    pid=$(cat "$dir/garage.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$signal" "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$dir/garage.pid"
}

command=${1:-}
case $command in
start)
    [[ $# -ge 4 ]] || die "usage: start DIR BASE_PORT REGION..."
    root=$2 base=$3
    shift 3
    command -v "$GARAGE" >/dev/null || die "garage not found (cargo install garage --locked)"
    mkdir -p "$root"
    i=0
    for region in "$@"; do
        start_region "$root" "$region" $((base + 10 * i))
        i=$((i + 1))
    done
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: stop DIR"
    for pidfile in "$2"/*/garage.pid; do
        [[ -e $pidfile ]] && stop_region "$(dirname "$pidfile")" TERM
    done
    ;;
kill)
    [[ $# -eq 3 ]] || die "usage: kill DIR REGION"
    stop_region "$2/$3" KILL
    ;;
restart)
    [[ $# -eq 3 ]] || die "usage: restart DIR REGION"
    [[ -f $2/$3/garage.toml ]] || die "no region $3 under $2"
    start_server "$2/$3"
    ;;
*)
    die "usage: regions.sh start|stop|kill|restart ..."
    ;;
esac
