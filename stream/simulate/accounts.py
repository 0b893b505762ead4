"""The issuer's customers: synthetic account ids (10 to 13 digits) reused across payments, a
few heavy users and a long tail. Built from a seed only.
"""

import random


class AccountPool:
    """``pick(u)`` maps a uniform draw to an account; low indices are picked more often.

    >>> pool = AccountPool(3, 100)
    >>> all(10 <= len(a) <= 13 and a.isdigit() for a in pool.account_ids)
    True
    >>> pool.account_ids == AccountPool(3, 100).account_ids
    True
    """

    def __init__(self, seed: int, size: int = 20_000) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        rng = random.Random(f"qris-guard/accounts/{seed}")
        seen: set[str] = set()
        ids: list[str] = []
        while len(ids) < size:
            digits = rng.randint(10, 13)
            account_id = str(rng.randrange(10 ** (digits - 1), 10**digits))
            if account_id not in seen:
                seen.add(account_id)
                ids.append(account_id)
        self.account_ids = tuple(ids)

    def pick(self, u: float) -> str:
        ids = self.account_ids
        return ids[int(u * u * len(ids))]
