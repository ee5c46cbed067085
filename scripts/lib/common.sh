# Shared by the scripts in scripts/: progress lines, failing with a reason, and
# installing what a fresh Debian machine lacks.

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

apt_updated=
apt_install() {
    command -v apt-get >/dev/null || die "cannot install $*: no apt-get (install it by hand)"
    [ "$(id -u)" = 0 ] || die "cannot install $*: run as root, or install it by hand"
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# baton needs Rust 1.94 or newer (its socketioxide dependency does); Debian's
# packaged cargo is older, so a missing or old toolchain is installed with rustup.
MIN_RUST=1.94
ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    local have
    have=$(rustc --version 2>/dev/null | awk '{print $2}')
    if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$MIN_RUST" "$have" | sort -V | head -n1)" = "$MIN_RUST" ]; then
        return
    fi
    if command -v rustup >/dev/null; then
        step "updating Rust (found ${have:-none}, need $MIN_RUST)"
        rustup toolchain install stable --profile minimal -c rustfmt && rustup default stable
        return
    fi
    step "installing Rust with rustup (found ${have:-none}, need $MIN_RUST)"
    command -v curl >/dev/null || apt_install curl ca-certificates
    command -v cc >/dev/null || apt_install build-essential
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt
    . "$HOME/.cargo/env"
}
