#!/bin/sh
# Pull-and-unpack benchmark: hangar against `skopeo copy` + `umoci unpack`, in the
# same run, from a docker-registry on loopback.
#
# usage: bench-image-pull.sh [ROOTFS] [RUNS]
#   ROOTFS  a root filesystem directory to build the image from, e.g. the output of
#           `debootstrap --variant=minbase bookworm DIR` (about 200 MB). Without it,
#           about 200 MB of random files are synthesised.
#   RUNS    runs per measurement (default 5).
# Needs root, docker-registry, skopeo, umoci, and a release build of hangar
# (`cargo build --release -p hangar`); HANGAR_BIN overrides where it is looked for.
#
# Image A has four layers (usr/lib, usr/share, the rest, and a config layer); image B
# is A plus one ~10 MB layer. Measured per run, each from a cold store:
#   hangar pull A               hangar image pull (download, verify, unpack)
#   skopeo+umoci A              skopeo copy to an OCI layout, then umoci unpack
#   hangar pull B, A cached     only B's top layer should cost anything
#   skopeo+umoci B, A cached    skopeo reuses A's blobs; umoci unpacks everything
# Prints a Markdown table of median and p99 (the slowest run, with so few runs).
set -eu

rootfs=${1:-}
runs=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
hangar=${HANGAR_BIN:-$here/target/release/hangar}
[ -x "$hangar" ] || { echo "build hangar first: cargo build --release -p hangar" >&2; exit 2; }
for tool in docker-registry skopeo umoci; do
    command -v $tool >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done

work=$(mktemp -d /var/tmp/hangar-bench-pull.XXXXXX)
registry_pid= daemon_pid=
cleanup() {
    for pid in $daemon_pid $registry_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- a registry on a free loopback port
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
until curl -s -o /dev/null "http://$reg/v2/"; do sleep 0.1; done

# --- images A and B
echo "building the images..." >&2
if [ -z "$rootfs" ]; then
    rootfs=$work/synthetic
    for d in usr/lib usr/share usr/bin var; do
        mkdir -p "$rootfs/$d"
        i=0
        while [ $i -lt 50 ]; do
            head -c 1000000 /dev/urandom >"$rootfs/$d/file$i"
            i=$((i + 1))
        done
    done
fi
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:a"
umoci unpack --image "$layout:a" "$work/bundle" >/dev/null
# One layer per slice of the tree, as image builders make them.
add_layer() { # PATH... (relative to the root filesystem), one repack for all
    for p in "$@"; do
        mkdir -p "$work/bundle/rootfs/$(dirname "$p")"
        cp -a "$rootfs/$p" "$work/bundle/rootfs/$(dirname "$p")/"
    done
    umoci repack --refresh-bundle --image "$layout:a" "$work/bundle"
}
rest=$(cd "$rootfs" && for p in * .[!.]*; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    if [ "$p" = usr ]; then
        for q in usr/* usr/.[!.]*; do
            case $q in usr/lib | usr/share) ;; *) [ -e "$q" ] && echo "$q" ;; esac
        done
    else
        echo "$p"
    fi
done)
[ -d "$rootfs/usr/lib" ] && add_layer usr/lib
[ -d "$rootfs/usr/share" ] && add_layer usr/share
# shellcheck disable=SC2086 # one path per word; root filesystems have no spaces here
add_layer $rest
mkdir -p "$work/bundle/rootfs/etc/bench"
echo a >"$work/bundle/rootfs/etc/bench/config"
umoci repack --refresh-bundle --image "$layout:a" "$work/bundle"
umoci config --image "$layout:a" --config.cmd /bin/sh
umoci unpack --image "$layout:a" "$work/bundle-b" >/dev/null
umoci tag --image "$layout:a" b
head -c 10000000 /dev/urandom >"$work/bundle-b/rootfs/etc/bench/extra"
umoci repack --image "$layout:b" "$work/bundle-b"
rm -rf "$work/bundle" "$work/bundle-b" "$work/synthetic"
for tag in a b; do
    skopeo copy -q --insecure-policy --dest-tls-verify=false "oci:$layout:$tag" "docker://$reg/bench/image:$tag"
done
layers_a=$(umoci stat --image "$layout:a" --json | python3 -c 'import json,sys; print(sum(1 for h in json.load(sys.stdin)["history"] if h.get("layer")))')
size_a=$(du -sm "$work/registry" | cut -f1)
rm -rf "$layout"

# --- hangar
mkdir -p "$work/hangar"
"$hangar" serve --data-dir "$work/hangar" --api-listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
daemon_pid=$!
until grep -q "api listening on" "$work/serve.out" 2>/dev/null; do sleep 0.1; done
export HANGAR_API=$(sed -n 's/^api listening on //p' "$work/serve.out")
export HANGAR_TOKEN=$(cat "$work/hangar/root-token")

A=$reg/bench/image:a
B=$reg/bench/image:b
results=$work/results
: >"$results"
record() { echo "$1	$2" >>"$results"; }

i=0
while [ $i -lt "$runs" ]; do
    # cold: nothing of A in the store
    "$hangar" image rm "$A" >/dev/null 2>&1 || true
    "$hangar" image rm "$B" >/dev/null 2>&1 || true
    "$hangar" image prune >/dev/null
    sync
    t0=$(now_ms); "$hangar" image pull "$A" >/dev/null; t1=$(now_ms)
    record "hangar pull A (cold)" $((t1 - t0))
    t0=$(now_ms); "$hangar" image pull "$B" >/dev/null; t1=$(now_ms)
    record "hangar pull B (A cached)" $((t1 - t0))

    rm -rf "$work/oci" "$work/unpacked-a" "$work/unpacked-b"
    sync
    t0=$(now_ms)
    skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$A" "oci:$work/oci:a"
    umoci unpack --image "$work/oci:a" "$work/unpacked-a" >/dev/null
    t1=$(now_ms)
    record "skopeo copy + umoci unpack A (cold)" $((t1 - t0))
    t0=$(now_ms)
    skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$B" "oci:$work/oci:b"
    umoci unpack --image "$work/oci:b" "$work/unpacked-b" >/dev/null
    t1=$(now_ms)
    record "skopeo copy + umoci unpack B (A cached)" $((t1 - t0))
    i=$((i + 1))
done
rm -rf "$work/oci" "$work/unpacked-a" "$work/unpacked-b"

echo "image A: $layers_a layers; registry holds ${size_a} MB (A and B, compressed); B = A + one 10 MB layer; $runs runs; p99 of $runs runs is the slowest"
echo
echo "| measurement | median ms | p99 ms |"
echo "|---|---:|---:|"
for what in "hangar pull A (cold)" "skopeo copy + umoci unpack A (cold)" \
    "hangar pull B (A cached)" "skopeo copy + umoci unpack B (A cached)"; do
    grep -F "$what	" "$results" | cut -f2 | sort -n | awk -v w="$what" '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            p = v[int((NR - 1) * 0.99) + 1]
            printf "| %s | %d | %d |\n", w, m, p
        }'
done
