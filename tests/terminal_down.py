"""A terminal module whose initialize() always fails, as MetaTrader5 does with no terminal."""


def initialize(*args, **kwargs):
    return False


def last_error():
    return (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")


def shutdown():
    return None
