"""Which broker account a database belongs to, and whether DTMS may use it with this terminal.

Pure: the store remembers an account record (``account_record``); at every connect the broker
actor asks :func:`check_account` what to do with the account the terminal is logged in to:

* nothing recorded yet (a new database, or one from before accounts were recorded): ``record``;
* the same login on the same server: ``keep`` (currency and the rest may be refreshed);
* another login or server: ``refuse`` -- its trades are not this account's positions, and
  reconciling them against this terminal would close every one of them -- unless the operator
  said so (``dtms serve --adopt-account``): ``adopt``, which records the new account.

Usage::

    verdict = check_account(stored, account_record(account), adopt=False)
    if verdict.action == "refuse":
        raise SystemExit(verdict.message)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADOPT_HINT = "dtms serve --adopt-account"


@dataclass(frozen=True, slots=True)
class AccountVerdict:
    action: str          # keep | record | adopt | refuse
    message: str = ""


def account_record(account: Any) -> dict[str, Any]:
    """What the store keeps of an account (``dtms.model.Account`` or alike)."""
    return {"login": int(account.login), "server": str(account.server),
            "currency": str(account.currency)}


def describe(record: dict[str, Any]) -> str:
    return f"login {record.get('login')} on server {record.get('server')!r}"


def check_account(stored: dict[str, Any] | None, current: dict[str, Any], *,
                  adopt: bool, db: str = "the database") -> AccountVerdict:
    """The verdict for the terminal's account ``current`` against the ``stored`` one."""
    if not stored:
        return AccountVerdict("record", f"{db} now belongs to {describe(current)}")
    same = (stored.get("login") == current["login"]
            and stored.get("server") == current["server"])
    if same:
        return AccountVerdict("keep")
    if adopt:
        return AccountVerdict("adopt", f"{db} belonged to {describe(stored)} and now belongs to "
                                       f"{describe(current)} (--adopt-account)")
    return AccountVerdict(
        "refuse",
        f"{db} belongs to account {describe(stored)}, but the trading terminal is logged in to "
        f"account {describe(current)}; DTMS touches none of the stored trades. Log the terminal "
        f"in to the database's account, give this account its own store.path, or, to manage "
        f"this account with this database from now on, run: {ADOPT_HINT}")
