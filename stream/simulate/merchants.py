"""The merchant catalogue: synthetic Indonesian QRIS merchants with an NMID, a name, an MCC,
an acquirer, terminals, a popularity and a typical ticket size; and how each acquirer's
payments are routed over the four national switches. Built from a seed only, so the same
seed always gives the same merchants.
"""

import bisect
import math
import random
from dataclasses import dataclass

SWITCHES = ("ARTAJASA", "RINTIS", "JALIN", "ALTO")

# Share of each acquirer among merchants, and the switch most of its traffic goes through.
ACQUIRERS: dict[str, tuple[float, str]] = {
    "BCA": (0.18, "RINTIS"),
    "BRI": (0.16, "JALIN"),
    "MANDIRI": (0.14, "JALIN"),
    "BNI": (0.09, "JALIN"),
    "CIMB": (0.05, "ARTAJASA"),
    "GOPAY": (0.14, "ARTAJASA"),
    "OVO": (0.08, "ALTO"),
    "DANA": (0.08, "ALTO"),
    "SHOPEEPAY": (0.08, "RINTIS"),
}
PRIMARY_SWITCH_SHARE = 0.75

_PLACES = (
    "Kemang", "Tebet", "Menteng", "Kelapa Gading", "Cikini", "Blok M", "Rawamangun", "Pluit",
    "Cempaka Putih", "Grogol", "Cibubur", "Depok", "Bekasi", "Tangerang", "Bogor", "Sudirman",
    "Kuningan", "Senayan", "Pasar Minggu", "Jatinegara", "Cawang", "Pondok Indah", "Sunter",
)  # fmt: skip
_PEOPLE = (
    "Siti", "Ani", "Budi", "Slamet", "Joko", "Rahmat", "Sri", "Dewi", "Wati", "Agus", "Hasan",
    "Nur", "Yanti", "Andi", "Sari", "Eko", "Rina", "Hendra", "Yusuf", "Made", "Ujang", "Asep",
)  # fmt: skip

# MCC: (share of merchants, popularity boost, median ticket in rupiah, log-spread, name patterns)
_MCCS: dict[str, tuple[float, float, int, float, tuple[str, ...]]] = {
    "5812": (0.25, 1.0, 45_000, 0.55, (
        "Rumah Makan Padang {place}", "Warung Makan Bu {person}", "Bakso Pak {person}",
        "Sate Madura Cak {person}", "Soto Betawi H. {person}", "Nasi Goreng {person}",
    )),
    "5814": (0.18, 1.6, 32_000, 0.45, (
        "Kopi Kenangan {place}", "Janji Jiwa {place}", "Mie Gacoan {place}",
        "Martabak {person}", "Es Teh Indonesia {place}", "Roti Bakar {person}",
    )),
    "5411": (0.20, 1.3, 85_000, 0.85, (
        "Indomaret {place}", "Alfamart {place}", "Toko Sembako {person}", "Superindo {place}",
        "Minimarket {person} Jaya",
    )),
    "5499": (0.12, 1.0, 22_000, 0.6, (
        "Warung Kopi {person}", "Toko Kue {person}", "Toko Buah {place}", "Kedai {person}",
    )),
    "5999": (0.09, 0.7, 120_000, 0.9, (
        "Toko {person} Elektronik", "Toko Baju {person}", "Toko Mainan {place}",
        "Toko Bangunan {person}",
    )),
    "5912": (0.06, 0.8, 65_000, 0.7, ("Apotek {person} Farma", "Apotek K-24 {place}")),
    "5541": (0.05, 1.2, 150_000, 0.5, ("SPBU {place}", "Pertamina {place}")),
    "7832": (0.03, 0.6, 55_000, 0.4, ("XXI {place}", "CGV {place}", "Cinepolis {place}")),
    "4121": (0.02, 6.0, 28_000, 0.6, ("GRAB INDONESIA", "GOJEK", "MAXIM", "Ojek {place}")),
}  # fmt: skip

MIN_AMOUNT = 5_000
MAX_AMOUNT = 2_000_000
PRICES = 64  # price points per merchant


@dataclass(frozen=True, slots=True)
class Merchant:
    nmid: str
    name: str
    mcc: str
    acquirer_id: str
    switches: tuple[str, ...]  # the primary switch first, then the fallbacks
    terminal_ids: tuple[str, ...]
    prices: tuple[int, ...]  # the merchant's price list in rupiah; tickets are drawn from it

    def switch_for(self, u: float) -> str:
        """The switch a payment is routed through, for a uniform draw ``u`` in [0, 1)."""
        switches = self.switches
        if u < PRIMARY_SWITCH_SHARE:
            return switches[0]
        share = (u - PRIMARY_SWITCH_SHARE) / (1.0 - PRIMARY_SWITCH_SHARE)
        return switches[1 + min(int(share * (len(switches) - 1)), len(switches) - 2)]

    def amount(self, u: float) -> int:
        """A ticket from the price list, for a uniform draw ``u`` in [0, 1)."""
        return self.prices[int(u * len(self.prices))]


def price_list(rng: random.Random, median: float, spread: float, size: int = PRICES) -> tuple[int, ...]:
    """Long-tailed (log-normal) prices, rounded to 500 below 20,000 rupiah, else to 1,000.

    >>> prices = price_list(random.Random(1), 45_000, 0.55)
    >>> all(MIN_AMOUNT <= p <= MAX_AMOUNT and p % 500 == 0 for p in prices), len(prices)
    (True, 64)
    """
    prices = []
    for _ in range(size):
        raw = min(max(rng.lognormvariate(math.log(median), spread), MIN_AMOUNT), MAX_AMOUNT)
        step = 500 if raw < 20_000 else 1_000
        prices.append(max(MIN_AMOUNT, int(raw / step + 0.5) * step))
    return tuple(prices)


class Catalogue:
    """Merchants with Zipf-like popularity; ``pick(u)`` maps a uniform draw to a merchant."""

    def __init__(self, merchants: list[Merchant], weights: list[float]) -> None:
        if not merchants or len(merchants) != len(weights):
            raise ValueError("a catalogue needs merchants, one weight each")
        self.merchants = tuple(merchants)
        self.weights = tuple(weights)
        total = 0.0
        cumulative = []
        for weight in weights:
            total += weight
            cumulative.append(total)
        self.cumulative_weights = tuple(cumulative)
        self.total_weight = total

    def pick(self, u: float) -> Merchant:
        index = bisect.bisect_right(self.cumulative_weights, u * self.total_weight)
        return self.merchants[min(index, len(self.merchants) - 1)]

    def busiest(self) -> Merchant:
        """The merchant with the largest popularity weight (the first of equals).

        >>> two = build_catalogue(1, 2).merchants
        >>> Catalogue(list(two), [1.0, 2.0]).busiest() == two[1]
        True
        """
        return self.merchants[self.weights.index(max(self.weights))]


def _routing(primary: str) -> tuple[str, ...]:
    return (primary, *(s for s in SWITCHES if s != primary))


def _choose(rng: random.Random, table: dict[str, float]) -> str:
    names = list(table)
    return rng.choices(names, weights=[table[n] for n in names])[0]


def build_catalogue(seed: int, size: int = 2000) -> Catalogue:
    """``size`` merchants drawn from ``seed`` alone.

    >>> a, b = build_catalogue(7, 50), build_catalogue(7, 50)
    >>> a.merchants == b.merchants and len({m.nmid for m in a.merchants}) == 50
    True
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = random.Random(f"qris-guard/merchants/{seed}")
    mcc_share = {mcc: spec[0] for mcc, spec in _MCCS.items()}
    acquirer_share = {acq: spec[0] for acq, spec in ACQUIRERS.items()}
    merchants: list[Merchant] = []
    weights: list[float] = []
    nmids: set[str] = set()
    for rank in range(size):
        mcc = _choose(rng, mcc_share)
        _, boost, median, spread, patterns = _MCCS[mcc]
        acquirer = _choose(rng, acquirer_share)
        nmid = f"ID10{rng.randrange(10**11):011d}"
        while nmid in nmids:
            nmid = f"ID10{rng.randrange(10**11):011d}"
        nmids.add(nmid)
        name = rng.choice(patterns).format(place=rng.choice(_PLACES), person=rng.choice(_PEOPLE))
        terminals = tuple(f"T{rng.randrange(10**7):07d}" for _ in range(1 + int(rng.random() ** 3 * 4)))
        merchants.append(
            Merchant(
                nmid=nmid,
                name=name.upper() if rng.random() < 0.3 else name,
                mcc=mcc,
                acquirer_id=acquirer,
                switches=_routing(ACQUIRERS[acquirer][1]),
                terminal_ids=terminals,
                prices=price_list(rng, median * rng.uniform(0.7, 1.4), spread),
            )
        )
        weights.append(boost / (rank + 1) ** 0.6)  # Zipf-like: a few busy merchants, a long tail
    return Catalogue(merchants, weights)
