"""A terminal bridge that connects but cannot unpickle its results: account_info raises, so the
broker actor crashes at every connect and DTMS never becomes ready."""

import pickle


def initialize(*args, **kwargs):
    return True


def shutdown():
    return None


def last_error():
    return (1, "Success")


def account_info():
    raise pickle.UnpicklingError("bridge: cannot unpickle the result of account_info")
