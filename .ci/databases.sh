# shellcheck shell=bash
# Sourced by .ci/run: make sure a PostgreSQL and a MariaDB answer on loopback for the storage
# tests (`tox -e postgres`, `tox -e mysql`), and export the URLs the tests read:
#
#   CATGA_TEST_POSTGRES_URL   postgresql+psycopg://postgres@127.0.0.1:PORT/test
#   CATGA_TEST_MYSQL_URL      mysql+pymysql://root@127.0.0.1:PORT/test
#
# For each database, in order:
#   1. a URL already in the environment is used as it is (nothing is probed or started);
#   2. a server answering on 127.0.0.1 at the standard port (5432, 3306; override with
#      CATGA_CI_PG_PORT / CATGA_CI_MYSQL_PORT) is used, after creating database `test` in it;
#   3. otherwise a throwaway server is started from the installed binaries, in a temp dir, on
#      that port when it is free (else on a free one); `ci_databases_stop` (run from .ci/run's
#      EXIT trap) stops it and deletes its files;
#   4. when no binaries are installed, they are installed with apt-get, as a last resort.
# A database that cannot be had is reported, and its tox env then fails with the reason.

CI_DB_CLEANUP=()

ci_log() { echo "CI databases: $*" >&2; }

ci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ci_port_is_free() {
    python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' \
        "$1" 2>/dev/null
}

# Wait (at most $1 seconds) until the command in "$@" succeeds.
ci_wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

# The user a throwaway server runs as: initdb and postgres refuse to run as root.
ci_service_user() {
    if [[ $(id -u) != 0 ]]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        echo nobody
    fi
}

ci_as_user() {
    local user=$1
    shift
    if [[ $user == "$(id -un)" ]]; then
        "$@"
    else
        runuser -u "$user" -- "$@"
    fi
}

ci_apt_install() {
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || {
            ci_log "cannot install $*: not root and no sudo"
            return 1
        }
        sudo=(sudo -n)
    fi
    ci_log "installing $* with apt-get (no server answered and no binaries were found)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

ci_databases_stop() {
    local i
    for ((i = ${#CI_DB_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CI_DB_CLEANUP[i]}" >/dev/null 2>&1 || true
    done
    CI_DB_CLEANUP=()
}

# --------------------------------------------------------------------------------------------
# PostgreSQL

ci_pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $dir && -x $dir/initdb ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
    else
        return 1
    fi
}

ci_pg_answers() {
    local port=$1 bindir
    bindir=$(ci_pg_bindir 2>/dev/null) || bindir=""
    local isready=pg_isready
    [[ -n $bindir && -x $bindir/pg_isready ]] && isready=$bindir/pg_isready
    command -v "$isready" >/dev/null && "$isready" -q -h 127.0.0.1 -p "$port" -t 3
}

# Create database `test` unless it exists; fails when we cannot log in as postgres.
ci_pg_ensure_test_db() {
    local port=$1
    command -v psql >/dev/null || return 1
    local exists
    exists=$(psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -w -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'test'") || return 1
    [[ $exists == 1 ]] || psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -w -qc \
        "CREATE DATABASE test" >/dev/null
}

ci_pg_start_throwaway() {
    local port=$1 bindir dir user
    bindir=$(ci_pg_bindir) || return 1
    ci_port_is_free "$port" || port=$(ci_free_port)
    dir=$(mktemp -d /tmp/catga-ci-postgres.XXXXXX)
    user=$(ci_service_user)
    chown "$user" "$dir"
    ci_log "starting a throwaway PostgreSQL ($bindir) as $user in $dir on port $port"
    # Run from the temp dir: the service user may not be allowed into the checkout.
    (cd "$dir" && ci_as_user "$user" "$bindir/initdb" -D "$dir/data" -U postgres \
        --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1) || {
        ci_log "initdb failed:"
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    }
    CI_DB_CLEANUP+=("rm -rf '$dir'")
    (cd "$dir" && ci_as_user "$user" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
        -w -t 60 -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start \
        >/dev/null) || {
        ci_log "PostgreSQL did not start:"
        cat "$dir/server.log" >&2
        return 1
    }
    CI_DB_CLEANUP+=("(cd /tmp && ci_as_user '$user' '$bindir/pg_ctl' -D '$dir/data' -m immediate -w stop)")
    ci_pg_ensure_test_db "$port" || return 1
    CI_PG_PORT_USED=$port
}

ci_ensure_postgres() {
    if [[ -n ${CATGA_TEST_POSTGRES_URL:-} ]]; then
        ci_log "PostgreSQL: using CATGA_TEST_POSTGRES_URL from the environment"
        return 0
    fi
    local port=${CATGA_CI_PG_PORT:-5432}
    CI_PG_PORT_USED=""
    if ci_pg_answers "$port"; then
        if ci_pg_ensure_test_db "$port"; then
            ci_log "PostgreSQL answers on 127.0.0.1:$port"
            CI_PG_PORT_USED=$port
        else
            ci_log "PostgreSQL on 127.0.0.1:$port refuses user postgres; starting our own"
            ci_pg_start_throwaway "$(ci_free_port)" || true
        fi
    elif ci_pg_bindir >/dev/null; then
        ci_pg_start_throwaway "$port" || true
    elif ci_apt_install postgresql; then
        if ci_pg_answers "$port" && ci_pg_ensure_test_db "$port"; then
            CI_PG_PORT_USED=$port
        else
            ci_pg_start_throwaway "$port" || true
        fi
    fi
    if [[ -n $CI_PG_PORT_USED ]]; then
        export CATGA_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$CI_PG_PORT_USED/test"
        ci_log "CATGA_TEST_POSTGRES_URL=$CATGA_TEST_POSTGRES_URL"
    else
        ci_log "no PostgreSQL available: the 'postgres' tox env will fail"
    fi
}

# --------------------------------------------------------------------------------------------
# MariaDB (or MySQL)

ci_first_command() {
    local name
    for name in "$@"; do
        if command -v "$name" >/dev/null; then
            command -v "$name"
            return 0
        elif [[ -x /usr/sbin/$name ]]; then
            echo "/usr/sbin/$name"
            return 0
        fi
    done
    return 1
}

ci_mysql_answers() {
    local admin
    admin=$(ci_first_command mariadb-admin mysqladmin) || return 1
    "$admin" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$1" -u root --connect-timeout=3 \
        ping >/dev/null 2>&1
}

ci_mysql_ensure_test_db() {
    local client
    client=$(ci_first_command mariadb mysql) || return 1
    "$client" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$1" -u root \
        -e "CREATE DATABASE IF NOT EXISTS test" >/dev/null 2>&1
}

ci_mysql_start_throwaway() {
    local port=$1 install server dir
    install=$(ci_first_command mariadb-install-db mysql_install_db) || return 1
    server=$(ci_first_command mariadbd mysqld) || return 1
    ci_port_is_free "$port" || port=$(ci_free_port)
    dir=$(mktemp -d /tmp/catga-ci-mariadb.XXXXXX)
    CI_DB_CLEANUP+=("rm -rf '$dir'")
    ci_log "starting a throwaway MariaDB ($server) in $dir on port $port"
    "$install" --no-defaults --datadir="$dir/data" --user="$(id -un)" \
        --auth-root-authentication-method=normal >"$dir/install.log" 2>&1 || {
        ci_log "$install failed:"
        cat "$dir/install.log" >&2
        return 1
    }
    "$server" --no-defaults --datadir="$dir/data" --port="$port" --socket="$dir/mysqld.sock" \
        --bind-address=127.0.0.1 --pid-file="$dir/mysqld.pid" --user="$(id -un)" \
        --innodb-flush-log-at-trx-commit=2 --log-error="$dir/server.log" \
        >"$dir/server.out" 2>&1 &
    local pid=$!
    CI_DB_CLEANUP+=("kill $pid; wait $pid")
    if ! ci_wait_for 60 ci_mysql_answers "$port"; then
        ci_log "MariaDB did not start:"
        cat "$dir/server.log" >&2
        return 1
    fi
    ci_mysql_ensure_test_db "$port" || return 1
    CI_MYSQL_PORT_USED=$port
}

ci_ensure_mysql() {
    if [[ -n ${CATGA_TEST_MYSQL_URL:-} ]]; then
        ci_log "MariaDB: using CATGA_TEST_MYSQL_URL from the environment"
        return 0
    fi
    local port=${CATGA_CI_MYSQL_PORT:-3306}
    CI_MYSQL_PORT_USED=""
    if ci_mysql_answers "$port" && ci_mysql_ensure_test_db "$port"; then
        ci_log "MariaDB answers on 127.0.0.1:$port"
        CI_MYSQL_PORT_USED=$port
    elif ci_first_command mariadbd mysqld >/dev/null; then
        ci_mysql_start_throwaway "$port" || true
    elif ci_apt_install mariadb-server; then
        if ci_mysql_answers "$port" && ci_mysql_ensure_test_db "$port"; then
            CI_MYSQL_PORT_USED=$port
        else
            ci_mysql_start_throwaway "$port" || true
        fi
    fi
    if [[ -n $CI_MYSQL_PORT_USED ]]; then
        export CATGA_TEST_MYSQL_URL="mysql+pymysql://root@127.0.0.1:$CI_MYSQL_PORT_USED/test"
        ci_log "CATGA_TEST_MYSQL_URL=$CATGA_TEST_MYSQL_URL"
    else
        ci_log "no MariaDB available: the 'mysql' tox env will fail"
    fi
}

ci_databases_start() {
    ci_ensure_postgres
    ci_ensure_mysql
}
