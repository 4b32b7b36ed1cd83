"""The login throttling rule (per client IP, per address, known IPs exempt), on a fake clock."""

from __future__ import annotations

from compiler.web.throttle import LoginThrottle, ThrottleRule

RULE = ThrottleRule(ip_limit=10, address_limit=5, window=600, address_pause=30, max_keys=50)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(throttle: LoginThrottle, address: str, ip: str, times: int) -> None:
    for _ in range(times):
        assert throttle.admit(address, ip) == 0
        throttle.record_failure(address, ip)


def test_an_ip_is_refused_after_its_limit_until_the_window_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(RULE, clock)
    for i in range(10):  # ten different addresses: only the IP rule applies
        _fail(throttle, f"user{i}@example.com", "203.0.113.9", 1)
    assert throttle.admit("other@example.com", "203.0.113.9") > 0
    assert throttle.admit("other@example.com", "198.51.100.1") == 0  # another IP is not hit
    clock.now += 600
    assert throttle.admit("other@example.com", "203.0.113.9") == 0


def test_an_address_takes_one_attempt_per_pause_after_a_wave() -> None:
    clock = Clock()
    throttle = LoginThrottle(RULE, clock)
    for i in range(5):  # a wave from five IPs
        _fail(throttle, "alice@example.com", f"203.0.113.{i}", 1)
    assert throttle.admit("Alice@example.com", "198.51.100.7") == 0  # one slot now
    wait = throttle.admit("alice@example.com", "198.51.100.8")
    assert 0 < wait <= 30
    clock.now += 30
    assert throttle.admit("alice@example.com", "198.51.100.8") == 0  # at most 30 s later
    assert throttle.admit("bob@example.com", "198.51.100.8") == 0  # other addresses are free


def test_a_known_ip_is_never_locked_out_by_a_wave_elsewhere() -> None:
    clock = Clock()
    throttle = LoginThrottle(RULE, clock)
    throttle.record_success("alice@example.com", "192.0.2.50")
    for i in range(40):
        _fail(throttle, "alice@example.com", f"203.0.113.{i}", 1) if i < 5 else None
        throttle.admit("alice@example.com", f"203.0.113.{i}")
    assert throttle.admit("alice@example.com", "192.0.2.50") == 0
    # The known IP's own failures still count against it as an IP.
    _fail(throttle, "alice@example.com", "192.0.2.50", 10)
    assert throttle.admit("alice@example.com", "192.0.2.50") > 0


def test_tables_stay_bounded() -> None:
    throttle = LoginThrottle(RULE, Clock())
    for i in range(500):
        throttle.record_failure(f"u{i}@example.com", f"10.0.{i // 250}.{i % 250}")
        throttle.record_success(f"u{i}@example.com", "10.1.0.1")
    assert len(throttle._ips) <= RULE.max_keys
    assert len(throttle._addresses) <= RULE.max_keys
    assert len(throttle._known) <= RULE.max_keys
