"""A terminal module that connects but whose positions_get raises (a broken bridge): the broker
actor crashes on every poll, so the supervision tree escalates to the root."""

from collections import namedtuple

AccountInfo = namedtuple("AccountInfo", "login server currency balance equity margin_mode")
ACCOUNT_MARGIN_MODE_RETAIL_HEDGING = 2


def initialize(*args, **kwargs):
    return True


def shutdown():
    return None


def last_error():
    return (1, "Success")


def account_info():
    return AccountInfo(1, "Broken-Bridge", "USD", 1000.0, 1000.0, 2)


def positions_get(*args, **kwargs):
    raise RuntimeError("bridge protocol error: unexpected frame")
