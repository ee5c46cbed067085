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

# redis-server and redis-cli; with `sentinel`, redis-sentinel too (Debian packages
# it apart). Only the binaries are wanted: what runs them starts its own servers.
ensure_redis() {
    if ! command -v redis-server >/dev/null; then
        step "installing Redis"
        apt_install redis-server
    fi
    if [ "${1:-}" = sentinel ] && ! command -v redis-sentinel >/dev/null; then
        step "installing Redis Sentinel"
        apt_install redis-sentinel
    fi
}

ensure_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        step "installing Node.js and npm"
        apt_install nodejs npm
    fi
}

# Prints the admin URL of a PostgreSQL server that databases can be created on: the
# URL GIVEN if there is one (it must answer); else the local server on
# 127.0.0.1:5432, installed and started if missing, as the postgres role under trust
# auth (CI, this repository's machines), or, where TCP asks for a password (a stock
# Debian server), as ROLE, created with a password of its own name. The one place
# PostgreSQL is provisioned: the tests, the benchmark and scripts/cluster use it.
#   pg_admin_url [GIVEN] [ROLE]
pg_admin_url() {
    local given=${1:-} role=${2:-baton} trusted=postgres://postgres@127.0.0.1:5432/postgres version
    command -v psql >/dev/null || { step "installing the PostgreSQL client"; apt_install postgresql-client; }
    if [ -n "$given" ]; then
        psql -w -Atq "$given" -c 'select 1' >/dev/null 2>&1 ||
            die "cannot connect to $given: $(psql -w -Atq "$given" -c 'select 1' 2>&1 | head -n 1)"
        echo "$given"
        return
    fi
    if ! command -v pg_ctlcluster >/dev/null; then
        step "installing PostgreSQL"
        apt_install postgresql
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        step "starting PostgreSQL"
        # shellcheck disable=SC2012 # version directories: plain names
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        [ -n "$version" ] || die "no cluster in /etc/postgresql to start"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
        pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start"
    fi
    if psql -w -Atq "$trusted" -c 'select 1' >/dev/null 2>&1; then
        echo "$trusted"
        return
    fi
    [[ $role =~ ^[a-z_][a-z0-9_]*$ ]] || die "not a plain role name: '$role'"
    step "creating the PostgreSQL role $role"
    su postgres -c "psql -q -v ON_ERROR_STOP=1" >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN CREATEDB PASSWORD '$role';
  END IF;
END \$\$;
SQL
    echo "postgres://$role:$role@127.0.0.1:5432/postgres"
}

# The PostgreSQL server the tests and the benchmark create their databases on:
# BATON_TEST_POSTGRES, or the local one (pg_admin_url).
ensure_postgres() {
    pg_admin_url "${BATON_TEST_POSTGRES:-}" baton_test
}
