#!/usr/bin/env bash
# Make RabbitMQ's STOMP plugin answer on 127.0.0.1:61613 (idempotent).
#
# Starts the local RabbitMQ node if it is not running (rabbitmq-server -detached), waits for
# it to boot, enables rabbitmq_stomp (online; a no-op when already enabled) and waits until
# the STOMP port accepts connections. Used by the test set-up (tests/bus/conftest.py).
#
# Environment: STOMP_PORT (default 61613), STOMP_WAIT (seconds per wait, default 30).
set -euo pipefail

port="${STOMP_PORT:-61613}"
wait_s="${STOMP_WAIT:-30}"
plugins_file="${RABBITMQ_ENABLED_PLUGINS_FILE:-/etc/rabbitmq/enabled_plugins}"

# rabbitmq-plugins run as root writes the enabled-plugins file with root's umask; the node runs as
# the rabbitmq user and refuses to boot when it cannot read that file (eacces). Keep it readable.
umask 022
readable_plugins_file() {
    if [[ $EUID -eq 0 && -e "$plugins_file" ]]; then
        chmod a+r "$plugins_file"
        if id rabbitmq >/dev/null 2>&1; then
            chown rabbitmq:rabbitmq "$plugins_file"
        fi
    fi
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exec 3>&- 3<&-
}

for tool in rabbitmqctl rabbitmq-server rabbitmq-plugins; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "enable-stomp: $tool not found (install rabbitmq-server)" >&2
        exit 2
    fi
done

readable_plugins_file
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "enable-stomp: starting RabbitMQ"
    rabbitmq-server -detached
    deadline=$((SECONDS + wait_s))
    until rabbitmq-diagnostics -q check_running >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "enable-stomp: RabbitMQ did not start within ${wait_s}s" >&2
            exit 1
        fi
        sleep 1
    done
elif ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
    # the node is up but its app was stopped (rabbitmqctl stop_app)
    echo "enable-stomp: starting the RabbitMQ app"
    rabbitmqctl -q start_app >/dev/null
    rabbitmqctl -q await_startup --timeout "$wait_s" >/dev/null
fi

if ! port_open "$port"; then
    rabbitmq-plugins -q enable rabbitmq_stomp >/dev/null
    readable_plugins_file
fi

deadline=$((SECONDS + wait_s))
until port_open "$port"; do
    if ((SECONDS >= deadline)); then
        echo "enable-stomp: STOMP port $port not open after ${wait_s}s" >&2
        exit 1
    fi
    sleep 0.2
done
echo "enable-stomp: RabbitMQ STOMP listening on 127.0.0.1:$port"
