"""Bus URLs: scheme registry, STOMP URL parsing, password masking (no broker needed)."""

from __future__ import annotations

import pytest

from tasklift.bus import registry
from tasklift.bus.embedded import EmbeddedBus
from tasklift.bus.registry import bus_from_url, known_bus_schemes, mask_bus_url
from tasklift.bus.stomp import StompBus
from tasklift.bus.stomp_codec import parse_stomp_url
from tasklift.errors import ConfigError


@pytest.mark.parametrize(
    "url", [None, "", "embedded://", "embedded", "EMBEDDED://", " embedded:// "]
)
def test_embedded_is_the_default(url):
    assert isinstance(bus_from_url(url), EmbeddedBus)


def test_an_instance_is_accepted_where_a_url_is():
    bus = EmbeddedBus()
    assert bus_from_url(bus) is bus


def test_known_schemes():
    assert {"embedded", "stomp", "stomp+ssl"} <= set(known_bus_schemes())


@pytest.mark.parametrize(
    ("url", "closest"),
    [
        ("stomp+tls://u:pw-123@h:61613/x", "stomp+ssl"),
        ("stmop://u:pw-123@h/x", "stomp"),
        ("embeded://", "embedded"),
        ("kafka://u:pw-123@h/x", None),
    ],
)
def test_an_unknown_scheme_lists_the_known_ones_and_the_closest(url, closest):
    with pytest.raises(ConfigError) as info:
        bus_from_url(url)
    text = str(info.value)
    assert "embedded, stomp, stomp+ssl" in text
    assert "pw-123" not in text
    if closest:
        assert f"did you mean {closest!r}?" in text
    else:
        assert "did you mean" not in text


def test_plugin_schemes_come_from_entry_points(monkeypatch):
    monkeypatch.setattr(
        registry, "_plugin_targets", lambda: {"mem": "tasklift.bus.embedded:EmbeddedBus"}
    )
    assert "mem" in known_bus_schemes()
    assert isinstance(bus_from_url("mem://"), EmbeddedBus)


def test_a_target_that_is_not_a_bus_is_a_config_error(monkeypatch):
    monkeypatch.setattr(registry, "_plugin_targets", lambda: {"odd": "tasklift.errors:ConfigError"})
    with pytest.raises(ConfigError, match="not a Bus class"):
        bus_from_url("odd://")
    monkeypatch.setattr(registry, "_plugin_targets", lambda: {"gone": "tasklift_nope:Bus"})
    with pytest.raises(ConfigError, match="unavailable"):
        bus_from_url("gone://")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (None, "embedded://"),
        ("embedded://", "embedded://"),
        ("stomp://guest:guest@127.0.0.1:61613/tl", "stomp://guest:***@127.0.0.1:61613/tl"),
        (
            "stomp+ssl://a:p%40ss@mq:61614/x.y?heartbeat=2",
            "stomp+ssl://a:***@mq:61614/x.y?heartbeat=2",
        ),
        ("stomp://a:b@c@host/x", "stomp://a:***@host/x"),  # '@' inside the password
        ("stomp://alice@host/x", "stomp://alice@host/x"),
        ("stomp://host:61613", "stomp://host:61613"),
        ("stomp://host?passcode=zz&vhost=v", "stomp://host?passcode=***&vhost=v"),
        ("stomp://u:zz@host/p#frag", "stomp://u:***@host/p#***"),
        ("no-scheme-user:zz@host", "***"),
    ],
)
def test_mask_hides_passwords(url, masked):
    assert mask_bus_url(url) == masked


def test_parse_a_full_stomp_url():
    cfg = parse_stomp_url(
        "stomp+ssl://alice:p%3Ass%40w@mq.example.org:61615/tasklift.prod"
        "?heartbeat=2.5&vhost=science&ca=/etc/ca.pem&verify=0"
    )
    assert (cfg.host, cfg.port, cfg.prefix) == ("mq.example.org", 61615, "tasklift.prod")
    assert (cfg.user, cfg.password, cfg.ssl) == ("alice", "p:ss@w", True)
    assert (cfg.heartbeat, cfg.vhost, cfg.ca_certs, cfg.verify) == (
        2.5,
        "science",
        "/etc/ca.pem",
        False,
    )
    assert "p:ss@w" not in repr(cfg)


def test_parse_defaults():
    cfg = parse_stomp_url("stomp://mq")
    assert (cfg.host, cfg.port, cfg.prefix, cfg.user, cfg.password) == (
        "mq",
        61613,
        "tasklift",
        None,
        None,
    )
    assert (cfg.ssl, cfg.vhost, cfg.heartbeat, cfg.verify) == (False, "/", 10.0, True)
    assert parse_stomp_url("stomp+ssl://mq/").port == 61614


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("stomp://u:secret-pw@h:notaport/x", "bad port"),
        ("stomp://u:secret-pw@h/a/b", "bad destination prefix"),
        ("stomp://u:secret-pw@h/a*b", "bad destination prefix"),
        ("stomp://u:secret-pw@h/x?heartbeat=soon", "heartbeat"),
        ("amqp://u:secret-pw@h/x", "not a STOMP bus URL"),
    ],
)
def test_malformed_stomp_urls_are_config_errors_without_the_password(url, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_stomp_url(url)
    assert "secret-pw" not in str(info.value)
    with pytest.raises(ConfigError):
        StompBus(url=url)  # before any connection attempt
