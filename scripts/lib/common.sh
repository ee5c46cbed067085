# Shared by the scripts in scripts/: progress lines, failing with a reason, and
# installing what a fresh Debian machine lacks.

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
# Prints the calling script's header comment (its --help).
print_header() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

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
        rustup toolchain install stable --profile minimal -c rustfmt -c clippy && rustup default stable
        return
    fi
    step "installing Rust with rustup (found ${have:-none}, need $MIN_RUST)"
    command -v curl >/dev/null || apt_install curl ca-certificates
    command -v cc >/dev/null || apt_install build-essential
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt -c clippy
    . "$HOME/.cargo/env"
}

# rustfmt and clippy, which the test command runs: added to a rustup toolchain that
# lacks them.
ensure_rust_checks() {
    ensure_rust
    cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 && return
    command -v rustup >/dev/null || die "cargo fmt and cargo clippy are needed: install rustfmt and clippy"
    step "adding rustfmt and clippy to the Rust toolchain"
    rustup component add rustfmt clippy
}

ensure_redis() {
    if ! command -v redis-server >/dev/null; then
        step "installing Redis"
        apt_install redis-server
    fi
}

ensure_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        step "installing Node.js and npm"
        apt_install nodejs npm
    fi
}

# Finds a PostgreSQL server the tests can create databases on, installing and
# starting one if there is none, and prints its admin URL.
ensure_postgres() {
    if [ -n "${BATON_TEST_POSTGRES:-}" ]; then
        echo "$BATON_TEST_POSTGRES"
        return
    fi
    if ! command -v pg_ctlcluster >/dev/null; then
        step "installing PostgreSQL" >&2
        apt_install postgresql
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        step "starting PostgreSQL" >&2
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
        pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start"
    fi
    # A trust-auth server (CI, this repository's machines) takes the postgres role as is.
    if psql -w -Atq "postgres://postgres@127.0.0.1:5432/postgres" -c 'select 1' >/dev/null 2>&1; then
        echo "postgres://postgres@127.0.0.1:5432/postgres"
        return
    fi
    # A stock Debian server asks for a password over TCP: give the tests a role of their own.
    step "creating the PostgreSQL role baton_test" >&2
    su postgres -c "psql -q -v ON_ERROR_STOP=1" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'baton_test') THEN
    CREATE ROLE baton_test LOGIN CREATEDB PASSWORD 'baton_test';
  END IF;
END $$;
SQL
    echo "postgres://baton_test:baton_test@127.0.0.1:5432/postgres"
}
