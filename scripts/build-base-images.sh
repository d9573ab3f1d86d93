#!/bin/sh
# Builds hangar's base images and pushes them into a registry:
#   busybox        from the host's busybox-static (a few MB, builds in a second)
#   debian         `debootstrap --variant=minbase bookworm` (about 200 MB, needs root
#                  and Debian's package mirror)
#
# usage: build-base-images.sh REGISTRY [busybox|debian|all]
#   REGISTRY is host:port of a registry; plain HTTP is used (a local test registry).
#   Images are pushed as REGISTRY/hangar/busybox:latest and REGISTRY/hangar/debian:bookworm.
# Needs: umoci, skopeo, busybox (static), debootstrap for the Debian image.
set -eu

registry=${1:?usage: build-base-images.sh REGISTRY [busybox|debian|all]}
which_images=${2:-all}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# new_image NAME: an empty OCI image in $work/layout:NAME, unpacked at $work/NAME.
new_image() {
    [ -d "$work/layout" ] || umoci init --layout "$work/layout"
    umoci new --image "$work/layout:$1"
    umoci unpack --image "$work/layout:$1" "$work/$1"
}

# finish_image NAME CMD: repack the bundle, set the command, push it.
finish_image() {
    name=$1 cmd=$2 dest=$3
    umoci repack --image "$work/layout:$name" "$work/$name"
    umoci config --image "$work/layout:$name" --config.cmd "$cmd" \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    skopeo copy --insecure-policy --dest-tls-verify=false \
        "oci:$work/layout:$name" "docker://$registry/$dest"
    echo "pushed $registry/$dest"
}

build_busybox() {
    new_image busybox
    root=$work/busybox/rootfs
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" \
        "$root/root" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/var"
    chmod 1777 "$root/tmp"
    cp "$(command -v busybox)" "$root/bin/busybox"
    # Relative links, so they resolve inside the machine's root.
    for applet in $(busybox --list-full); do
        case $applet in bin/busybox) continue ;; esac
        dir=$(dirname "$applet")
        if [ "$dir" = . ]; then
            target=bin/busybox
        else
            target=$(echo "$dir" | sed 's,[^/][^/]*,..,g')/bin/busybox
        fi
        ln -sf "$target" "$root/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    finish_image busybox /bin/sh hangar/busybox:latest
}

build_debian() {
    new_image debian
    # No mirror argument: debootstrap uses Debian's default.
    debootstrap --variant=minbase bookworm "$work/debian-root"
    cp -a "$work/debian-root/." "$work/debian/rootfs/"
    rm -rf "$work/debian-root"
    finish_image debian /bin/bash hangar/debian:bookworm
}

case $which_images in
    busybox) build_busybox ;;
    debian) build_debian ;;
    all) build_busybox; build_debian ;;
    *) echo "unknown image set $which_images: use busybox, debian or all" >&2; exit 2 ;;
esac
