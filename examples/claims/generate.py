#!/usr/bin/env python3
"""Generates the sample roster and claims of examples/ (deterministic: fixed random seed).

    python3 examples/claims/generate.py          # writes examples/roster.csv and examples/claims/*.jsonl
    python3 examples/claims/generate.py --check  # checks the files as they are, writes nothing

Writes:
  examples/roster.csv                            ~60 pseudonymous members and their enrollments
  examples/claims/day.jsonl                      one day's feed of ~200 claims across the schemes
  examples/claims/worked-example-a.jsonl         ADJUDICATION.md worked example A, claims H1-0001..H1-0003
  examples/claims/worked-example-a-after-reversal.jsonl   ... H1-0004, settled after H1-0002 is reversed
  examples/claims/worked-example-b.jsonl         ADJUDICATION.md worked example B, claims Z-1..Z-4

Every claim is a ClaimDraft (src/domain/claim.rs) as JSON on one line. Amounts are CNY strings with
exactly two decimals, computed in whole fen so that no float rounding reaches the files.
"""

import csv
import io
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 20220615
HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent

CIXI_2022 = [
    "cixi-medical-assistance",
    "cixi-major-illness-topup",
    "cixi-tianyi-yongning-bao",
    "cixi-burden-stop-loss",
]
ZHONGNING = ("zhongning-anti-poverty", "2020-04-26")
CHUNAN_SUPPLEMENTARY = ("chunan-supplementary-medical", "2023-01-01")
CHUNAN_TEMPORARY = ("chunan-temporary-assistance", "2023-07-01")
SHIYAN = ("shiyan-medical-assistance", "2017-01-01")

# The nine designated hospitals of examples/terms/shiyan-medical-assistance_2017-01-01.toml, and two
# county hospitals that are not on that list (claims there get FACILITY_NOT_DESIGNATED).
SHIYAN_DESIGNATED = [
    "shiyan-taihe-hospital",
    "shiyan-peoples-hospital",
    "dongfeng-general-hospital",
    "shiyan-tcm-hospital",
    "shiyan-maternal-child-hospital",
    "shiyan-xiyuan-hospital",
    "shiyan-integrated-tcm-western-hospital",
    "dongfeng-huaguo-hospital",
    "dongfeng-maojian-hospital",
]
SHIYAN_NOT_DESIGNATED = ["zhushan-county-hospital", "yunxi-county-hospital"]

DRAFT_FIELDS = {
    "claim_id", "hospital_id", "member_id", "service_date", "visit_kind", "outpatient_kind", "cause",
    "lines", "upstream",
}
LINE_FIELDS = {"code", "expense_class", "amount"}
UPSTREAM_FIELDS = {"kind", "amount"}


def money(fen):
    """Whole fen as a CNY string with two decimals."""
    assert fen >= 0, fen
    return f"{fen // 100}.{fen % 100:02d}"


def yuan(text):
    """A CNY string as whole fen (exact)."""
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


# ---------------------------------------------------------------------------------------------------
# Roster
# ---------------------------------------------------------------------------------------------------

def roster(rng):
    """Rows (member_id, category, effective_date, product_code, period_start, premium) and members by
    scheme. The category row is combined with the first enrollment row; a mid-year category change is
    a row with only member_id, category and effective_date."""
    rows = []
    members = {"cixi": [], "zhongning": [], "chunan": [], "shiyan": []}
    changes = {}

    def enroll(member, category, since, products, scheme, premium=""):
        for i, (code, start) in enumerate(products):
            rows.append((member, category if i == 0 else "", since if i == 0 else "", code, start,
                         premium if code != "cixi-medical-assistance" else ""))
        members[scheme].append((member, category))

    # Worked example A: M1, DIBAO, all four Cixi 2022 products.
    enroll("M1", "DIBAO", "2022-01-01", [(c, "2022-01-01") for c in CIXI_2022], "cixi")
    # Worked example B: M2, AT_RISK, Zhongning anti-poverty insurance 2020-04-26.
    enroll("M2", "AT_RISK", "2020-01-01", [ZHONGNING], "zhongning")

    cixi_categories = ["DIBAO"] * 12 + ["DESTITUTE"] * 5 + ["DIBAO_MARGINAL"] * 8
    rng.shuffle(cixi_categories)
    for i, category in enumerate(cixi_categories, start=1):
        enroll(f"CX-{i:04d}", category, "2022-01-01", [(c, "2022-01-01") for c in CIXI_2022], "cixi")

    zn_categories = ["AT_RISK"] * 9 + ["UNSTABLE_EXIT"] * 6
    rng.shuffle(zn_categories)
    for i, category in enumerate(zn_categories, start=1):
        # A few rows name the premium explicitly (the same as the product's default).
        enroll(f"ZN-{i:04d}", category, "2020-01-01", [ZHONGNING], "zhongning", "60.00" if i % 5 == 0 else "")

    ca_categories = ["DIBAO"] * 5 + ["DIBAO_MARGINAL"] * 4 + ["DESTITUTE"] * 2
    rng.shuffle(ca_categories)
    for i, category in enumerate(ca_categories, start=1):
        enroll(f"CA-{i:04d}", category, "2023-01-01", [CHUNAN_SUPPLEMENTARY, CHUNAN_TEMPORARY], "chunan")
    # A household in sudden hardship: temporary assistance only.
    enroll("CA-0012", "SUDDEN_HARDSHIP", "2023-01-01", [CHUNAN_TEMPORARY], "chunan")

    sy_categories = ["DIBAO", "DESTITUTE", "ORPHAN", "DIBAO", "DIBAO", "SEVERE_DISABILITY"]
    for i, category in enumerate(sy_categories, start=1):
        enroll(f"SY-{i:04d}", category, "2017-01-01", [SHIYAN], "shiyan")

    # Dynamic management: mid-year category changes.
    def change(member, category, since):
        rows.append((member, category, since, "", "", ""))
        changes.setdefault(member, []).append((since, category))

    # Each change picks, in id order, the first member of the scheme (not M1 / M2) holding the category
    # it changes from and not changed yet.
    def change_one(scheme, before, after, since):
        for member, category in members[scheme]:
            if member not in ("M1", "M2") and category == before and member not in changes:
                change(member, after, since)
                return

    change_one("cixi", "DIBAO_MARGINAL", "DIBAO", "2022-06-01")   # marginal household admitted to dibao
    change_one("cixi", "DIBAO", "GENERAL", "2022-06-01")          # left dibao: not eligible from June
    change_one("cixi", "DIBAO", "DESTITUTE", "2022-05-01")        # now destitute (特困)
    change_one("cixi", "DIBAO_MARGINAL", "DIBAO", "2022-07-01")   # a change after the sample day
    change_one("zhongning", "AT_RISK", "GENERAL", "2020-10-01")   # risk removed (消除风险): not covered
    change_one("zhongning", "UNSTABLE_EXIT", "AT_RISK", "2020-08-01")  # still covered
    change_one("chunan", "DIBAO_MARGINAL", "DIBAO", "2023-08-01")  # temporary-assistance cap 8,000 -> 10,000
    return rows, members, changes


def category_on(member, base, changes, date):
    category = base
    for since, c in sorted(changes.get(member, [])):
        if since <= date:
            category = c
    return category


# ---------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------

def split(rng, total, codes):
    """Splits whole fen over line codes (at least 1 fen each when possible)."""
    codes = list(codes)
    if total <= 0 or not codes:
        return []
    n = min(len(codes), max(1, total))
    weights = [rng.uniform(0.3, 1.0) for _ in range(n)]
    parts = [int(total * w / sum(weights)) for w in weights]
    parts[0] += total - sum(parts)
    return [(codes[i], parts[i]) for i in range(n) if parts[i] > 0]


def lognormal_fen(rng, median_yuan, sigma, low_yuan, high_yuan):
    value = rng.lognormvariate(0, sigma) * median_yuan
    value = min(max(value, low_yuan), high_yuan)
    return int(round(value * 100))


IN_SCOPE_CODES = {
    "INPATIENT": ["bed-days", "nursing", "drug-western", "lab-tests", "imaging-ct", "surgery", "treatment"],
    "OUTPATIENT": ["consultation", "drug-western", "lab-tests", "drug-chinese-patent"],
    "PHARMACY": ["drug-chronic", "drug-chinese-patent"],
}


def medical_claim(rng, claim_id, hospital, member, date, visit, outpatient_kind="", cause="", size=1.0):
    """A medical claim with realistic proportions: IN_SCOPE, B-class self-pay, out-of-catalogue and a
    little non-compliant cost; basic insurance (and critical-illness insurance on large bills) paid
    part of IN_SCOPE upstream."""
    if visit == "INPATIENT":
        in_scope = lognormal_fen(rng, 14000 * size, 0.75, 1800, 260000)
        b_self = int(in_scope * rng.uniform(0.03, 0.10))
        ooc = int(in_scope * rng.uniform(0.05, 0.40)) if rng.random() < 0.75 else 0
        # Very large bills are mostly expensive treatment that basic insurance pays a smaller share of.
        basic_share = rng.uniform(0.55, 0.72) if size < 10 else rng.uniform(0.45, 0.52)
    elif visit == "OUTPATIENT":
        median = 2600 if outpatient_kind in ("CHRONIC", "SPECIFIED") else 420
        in_scope = lognormal_fen(rng, median * size, 0.7, 60, 30000)
        b_self = int(in_scope * rng.uniform(0.02, 0.08)) if rng.random() < 0.6 else 0
        ooc = int(in_scope * rng.uniform(0.05, 0.30)) if rng.random() < 0.4 else 0
        basic_share = rng.uniform(0.40, 0.60)
    else:  # PHARMACY
        in_scope = lognormal_fen(rng, 320 * size, 0.6, 30, 3000)
        b_self = int(in_scope * rng.uniform(0.02, 0.06)) if rng.random() < 0.5 else 0
        ooc = int(in_scope * rng.uniform(0.05, 0.25)) if rng.random() < 0.3 else 0
        basic_share = rng.uniform(0.30, 0.50)
    non_compliant = int(in_scope * rng.uniform(0.002, 0.02)) if rng.random() < 0.35 else 0

    lines = []
    codes = IN_SCOPE_CODES[visit][:]
    rng.shuffle(codes)
    k = rng.randint(2, min(5, len(codes)))
    lines += [(c, "IN_SCOPE", a) for c, a in split(rng, in_scope, codes[:k])]
    lines += [(c, "B_SELF_PAY", a) for c, a in split(rng, b_self, ["drug-b-self-pay", "material-b-self-pay"][: rng.randint(1, 2)])]
    lines += [(c, "OUT_OF_CATALOGUE", a) for c, a in split(rng, ooc, ["drug-out-of-catalogue", "material-imported"][: rng.randint(1, 2)])]
    lines += [(c, "NON_COMPLIANT", a) for c, a in split(rng, non_compliant, ["fee-non-compliant"])]

    basic = int(in_scope * basic_share)
    upstream = [("BASIC", basic)]
    # Critical-illness insurance pays part of a large in-scope burden above its threshold.
    threshold = 2000000  # 20,000.00
    if visit == "INPATIENT" and in_scope - basic > threshold:
        upstream.append(("CRITICAL_ILLNESS", int((in_scope - basic - threshold) * rng.uniform(0.5, 0.6))))

    claim = {
        "claim_id": claim_id,
        "hospital_id": hospital,
        "member_id": member,
        "service_date": date,
        "visit_kind": visit,
    }
    if outpatient_kind:
        claim["outpatient_kind"] = outpatient_kind
    if cause:
        claim["cause"] = cause
    claim["lines"] = [{"code": c, "expense_class": k, "amount": money(a)} for c, k, a in lines]
    claim["upstream"] = [{"kind": k, "amount": money(a)} for k, a in upstream if a > 0]
    return claim


def non_medical_claim(rng, claim_id, hospital, member, date, cause):
    """A Zhongning anti-poverty claim for a non-medical loss: only OTHER_LOSS lines, no upstream."""
    if cause == "EDUCATION":
        items = [("tuition", lognormal_fen(rng, 5200, 0.35, 1500, 12000)),
                 ("boarding", lognormal_fen(rng, 1800, 0.4, 400, 5000)),
                 ("textbooks", lognormal_fen(rng, 450, 0.3, 100, 1500))]
        items = items[: rng.randint(1, 3)]
    else:
        items = [("house-damage", lognormal_fen(rng, 16000, 0.7, 2000, 90000)),
                 ("crop-loss", lognormal_fen(rng, 5000, 0.6, 500, 30000)),
                 ("livestock-loss", lognormal_fen(rng, 7000, 0.6, 800, 40000))]
        items = rng.sample(items, rng.randint(1, 2))
    return {
        "claim_id": claim_id,
        "hospital_id": hospital,
        "member_id": member,
        "service_date": date,
        "visit_kind": "NON_MEDICAL",
        "cause": cause,
        "lines": [{"code": c, "expense_class": "OTHER_LOSS", "amount": money(a)} for c, a in items],
    }


class Ids:
    """Claim ids unique per hospital: <prefix>-<yyyymmdd>-<nnnn>. A placeholder while the claims are
    made; `renumber` numbers them per hospital in file order once the feed is merged."""

    def __init__(self):
        self.prefix = {}

    def __call__(self, hospital, prefix, date):
        self.prefix[hospital] = prefix
        return ""

    def renumber(self, claims):
        seen = Counter()
        for c in claims:
            seen[c["hospital_id"]] += 1
            c["claim_id"] = f"{self.prefix[c['hospital_id']]}-{c['service_date'].replace('-', '')}-{seen[c['hospital_id']]:04d}"


def day_claims(rng, members, changes):
    ids = Ids()
    streams = []

    def pick_date(days):
        return rng.choice(days)

    # Cixi, June 2022: the four-layer cascade (medical assistance, top-up, Tianyi Yongning Bao, stop-loss).
    cixi_hospitals = [("cixi-peoples-hospital", "CXRM"), ("cixi-second-peoples-hospital", "CXER"),
                      ("cixi-tcm-hospital", "CXZY")]
    cixi_days = [f"2022-06-{d:02d}" for d in range(1, 16)]
    cixi_members = [m for m, _ in members["cixi"] if m != "M1"]
    out = []
    for i in range(87):
        member = rng.choice(cixi_members)
        date = pick_date(cixi_days)
        hospital, prefix = rng.choice(cixi_hospitals)
        r = rng.random()
        if r < 0.40:
            size = 6.0 if rng.random() < 0.12 else 1.0  # a few heavy stays reach the top-up and stop-loss
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "INPATIENT", size=size)
        elif r < 0.85:
            kind = rng.choice(["GENERAL", "GENERAL", "ACUTE", "CHRONIC", "CHRONIC", "SPECIFIED", "ACCIDENT"])
            cause = "ACCIDENT" if kind == "ACCIDENT" else ""
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "OUTPATIENT", kind, cause)
        else:
            pharmacy = ("cixi-hushan-pharmacy", "CXYD")
            claim = medical_claim(rng, ids(pharmacy[0], pharmacy[1], date), pharmacy[0], member, date, "PHARMACY")
        out.append(claim)
    # A member with a grave illness, three long stays in the fortnight (transfers between hospitals):
    # medical assistance reaches its 100,000 product cap, and the top-up (above 30,000 a year) and the
    # stop-loss (above 50,000 a year) start paying.
    heavy = rng.choice([m for m, c in members["cixi"] if c == "DIBAO" and m != "M1"])
    for date, (hospital, prefix) in zip(["2022-06-03", "2022-06-09", "2022-06-14"], cixi_hospitals):
        out.append(medical_claim(rng, ids(hospital, prefix, date), hospital, heavy, date, "INPATIENT", size=18.0))
    streams.append(sorted(out, key=lambda c: c["service_date"]))

    # Zhongning, November 2020: anti-poverty insurance; medical claims and NON_MEDICAL education and
    # disaster / accident property-loss claims (filed through the civil-affairs office).
    zn_days = [f"2020-11-{d:02d}" for d in range(2, 17)]
    zn_members = [m for m, _ in members["zhongning"] if m != "M2"]
    out = []
    for i in range(40):
        member = rng.choice(zn_members)
        date = pick_date(zn_days)
        r = rng.random()
        if r < 0.45:
            hospital, prefix = rng.choice([("zhongning-county-hospital", "ZNXY"), ("zhongning-tcm-hospital", "ZNZY")])
            cause = rng.choice(["", "", "", "ACCIDENT", "DISASTER"])
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "INPATIENT",
                                  cause=cause, size=2.2)
        elif r < 0.60:
            hospital, prefix = "zhongning-county-hospital", "ZNXY"
            kind = rng.choice(["CHRONIC", "SPECIFIED", "GENERAL"])
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "OUTPATIENT", kind)
        elif r < 0.80:
            office = "zhongning-civil-affairs"
            claim = non_medical_claim(rng, ids(office, "ZNMZ", date), office, member, date, "EDUCATION")
        else:
            office = "zhongning-civil-affairs"
            cause = rng.choice(["DISASTER", "DISASTER", "ACCIDENT"])
            claim = non_medical_claim(rng, ids(office, "ZNMZ", date), office, member, date, cause)
        out.append(claim)
    streams.append(sorted(out, key=lambda c: c["service_date"]))

    # Chun'an, August 2023: supplementary medical insurance (layer 35) and temporary assistance (70).
    ca_days = [f"2023-08-{d:02d}" for d in range(1, 16)]
    ca_members = [m for m, _ in members["chunan"]]
    out = []
    for i in range(45):
        member = rng.choice(ca_members)
        date = pick_date(ca_days)
        r = rng.random()
        if r < 0.40:
            hospital, prefix = rng.choice([("chunan-first-peoples-hospital", "CAYY"), ("chunan-tcm-hospital", "CAZY")])
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "INPATIENT")
        elif r < 0.85:
            hospital, prefix = rng.choice([("chunan-first-peoples-hospital", "CAYY"), ("qiandaohu-health-centre", "QDHW")])
            kind = rng.choice(["GENERAL", "ACUTE", "CHRONIC", "SPECIFIED", "ACCIDENT"])
            cause = "ACCIDENT" if kind == "ACCIDENT" else ""
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "OUTPATIENT", kind, cause)
        else:
            pharmacy = ("chunan-qiandaohu-pharmacy", "CAYD")
            claim = medical_claim(rng, ids(pharmacy[0], pharmacy[1], date), pharmacy[0], member, date, "PHARMACY")
        out.append(claim)
    streams.append(sorted(out, key=lambda c: c["service_date"]))

    # Shiyan, May 2017: medical assistance, paid only at the nine designated hospitals.
    sy_days = [f"2017-05-{d:02d}" for d in range(2, 17)]
    sy_members = [m for m, _ in members["shiyan"]]
    out = []
    for i in range(25):
        member = rng.choice(sy_members)
        date = pick_date(sy_days)
        if rng.random() < 0.75:
            hospital = rng.choice(SHIYAN_DESIGNATED)
        else:
            hospital = rng.choice(SHIYAN_NOT_DESIGNATED)
        prefix = "".join(w[0] for w in hospital.split("-")).upper()
        if rng.random() < 0.6:
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "INPATIENT")
        else:
            kind = rng.choice(["CHRONIC", "SPECIFIED", "GENERAL"])
            claim = medical_claim(rng, ids(hospital, prefix, date), hospital, member, date, "OUTPATIENT", kind)
        out.append(claim)
    streams.append(sorted(out, key=lambda c: c["service_date"]))

    # Interleave the four feeds as they would arrive, keeping each feed's own order.
    merged = []
    positions = [0] * len(streams)
    while any(p < len(s) for p, s in zip(positions, streams)):
        live = [i for i, s in enumerate(streams) if positions[i] < len(s)]
        weights = [len(streams[i]) - positions[i] for i in live]
        i = rng.choices(live, weights)[0]
        merged.append(streams[i][positions[i]])
        positions[i] += 1
    ids.renumber(merged)
    return merged


def line(code, expense_class, amount):
    return {"code": code, "expense_class": expense_class, "amount": amount}


def worked_example_a():
    """ADJUDICATION.md worked example A, member M1 (DIBAO), hospital H1, 2022. H1-0004 is settled after
    H1-0002 is reversed; it carries the content of H1-0003, which is what gives the figures of the
    example (medical assistance 9,600.00, Tianyi Yongning Bao 617.28, out of pocket 3,017.28)."""
    h1_0003 = {
        "hospital_id": "H1", "member_id": "M1", "service_date": "2022-05-18",
        "visit_kind": "OUTPATIENT",
        "lines": [
            line("outpatient-in-scope", "IN_SCOPE", "20000.00"),
            line("out-of-catalogue", "OUT_OF_CATALOGUE", "1234.56"),
        ],
        "upstream": [{"kind": "BASIC", "amount": "8000.00"}],
    }
    claims = [
        {
            "claim_id": "H1-0001", "hospital_id": "H1", "member_id": "M1", "service_date": "2022-03-15",
            "visit_kind": "INPATIENT",
            "lines": [
                line("inpatient-in-scope", "IN_SCOPE", "80000.00"),
                line("b-class-self-pay", "B_SELF_PAY", "6000.00"),
                line("out-of-catalogue", "OUT_OF_CATALOGUE", "30000.00"),
                line("non-compliant", "NON_COMPLIANT", "500.00"),
            ],
            "upstream": [{"kind": "BASIC", "amount": "48000.00"}, {"kind": "CRITICAL_ILLNESS", "amount": "12000.00"}],
        },
        {
            "claim_id": "H1-0002", "hospital_id": "H1", "member_id": "M1", "service_date": "2022-04-20",
            "visit_kind": "OUTPATIENT", "outpatient_kind": "CHRONIC",
            "lines": [line("chronic-treatment", "IN_SCOPE", "30000.00")],
            "upstream": [{"kind": "BASIC", "amount": "15000.00"}],
        },
        {"claim_id": "H1-0003", **h1_0003},
    ]
    after_reversal = [{"claim_id": "H1-0004", **h1_0003}]
    return claims, after_reversal


def worked_example_b():
    """ADJUDICATION.md worked example B, member M2 (AT_RISK), Zhongning 2020-04-26..2021-04-25."""
    return [
        {
            "claim_id": "Z-1", "hospital_id": "zhongning-county-hospital", "member_id": "M2",
            "service_date": "2020-06-10", "visit_kind": "INPATIENT", "cause": "ACCIDENT",
            "lines": [line("inpatient-in-scope", "IN_SCOPE", "60000.00"),
                      line("out-of-catalogue", "OUT_OF_CATALOGUE", "9000.00")],
            "upstream": [{"kind": "BASIC", "amount": "39000.00"}],
        },
        {
            "claim_id": "Z-2", "hospital_id": "zhongning-county-hospital", "member_id": "M2",
            "service_date": "2020-09-02", "visit_kind": "INPATIENT",
            "lines": [line("inpatient-in-scope", "IN_SCOPE", "150000.00"),
                      line("out-of-catalogue", "OUT_OF_CATALOGUE", "40000.00")],
            "upstream": [{"kind": "BASIC", "amount": "90000.00"}, {"kind": "CRITICAL_ILLNESS", "amount": "30000.00"}],
        },
        {
            "claim_id": "Z-3", "hospital_id": "zhongning-civil-affairs", "member_id": "M2",
            "service_date": "2020-09-15", "visit_kind": "NON_MEDICAL", "cause": "EDUCATION",
            "lines": [line("school-costs", "OTHER_LOSS", "16000.00")],
        },
        {
            "claim_id": "Z-4", "hospital_id": "zhongning-civil-affairs", "member_id": "M2",
            "service_date": "2021-03-01", "visit_kind": "NON_MEDICAL", "cause": "EDUCATION",
            "lines": [line("school-costs", "OTHER_LOSS", "8000.00")],
        },
    ]


# ---------------------------------------------------------------------------------------------------
# Output and checks
# ---------------------------------------------------------------------------------------------------

def jsonl(claims):
    return "".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) + "\n" for c in claims)


def roster_csv(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["member_id", "category", "effective_date", "product_code", "period_start", "premium"])
    w.writerows(rows)
    return buf.getvalue()


def two_decimals(text):
    whole, dot, frac = text.partition(".")
    return whole.isdigit() and dot == "." and len(frac) == 2 and frac.isdigit()


PERIODS = {
    **{c: ("2022-01-01", "2022-12-31") for c in CIXI_2022},
    "zhongning-anti-poverty": ("2020-04-26", "2021-04-25"),
    "chunan-supplementary-medical": ("2023-01-01", "2023-12-31"),
    "chunan-temporary-assistance": ("2023-07-01", "2024-06-30"),
    "shiyan-medical-assistance": ("2017-01-01", "2017-12-31"),
}


def check_roster(path):
    problems = []
    enrolled = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != ["member_id", "category", "effective_date", "product_code", "period_start", "premium"]:
            problems.append(f"{path}: line 1: unexpected header {header}")
        for n, row in enumerate(reader, start=2):
            member, category, since, product, start, premium = row
            if len(member) == 18 and member[:17].isdigit():
                problems.append(f"{path}: line {n}: member id looks like a national ID number")
            if bool(category) != bool(since):
                problems.append(f"{path}: line {n}: category and effective_date go together")
            if bool(product) != bool(start):
                problems.append(f"{path}: line {n}: product_code and period_start go together")
            if product and PERIODS.get(product, ("",))[0] != start:
                problems.append(f"{path}: line {n}: unknown product period {product} {start}")
            if premium and not two_decimals(premium):
                problems.append(f"{path}: line {n}: premium {premium!r} needs two decimals")
            if product:
                enrolled.setdefault(member, set()).add(product)
    return problems, enrolled


def check_claims(path, enrolled):
    problems = []
    seen = set()
    count = 0
    with open(path) as f:
        for n, text in enumerate(f, start=1):
            where = f"{path}: line {n}"
            try:
                c = json.loads(text)
            except ValueError as e:
                problems.append(f"{where}: not JSON: {e}")
                continue
            count += 1
            if set(c) - DRAFT_FIELDS:
                problems.append(f"{where}: unknown fields {set(c) - DRAFT_FIELDS}")
            for field in ("claim_id", "hospital_id", "member_id", "service_date", "visit_kind", "lines"):
                if not c.get(field):
                    problems.append(f"{where}: {field} missing")
            key = (c.get("hospital_id"), c.get("claim_id"))
            if key in seen:
                problems.append(f"{where}: claim id {key} used twice")
            seen.add(key)
            visit = c.get("visit_kind")
            if c.get("outpatient_kind") and visit != "OUTPATIENT":
                problems.append(f"{where}: outpatient_kind on a {visit} visit")
            if c.get("cause") == "EDUCATION" and visit != "NON_MEDICAL":
                problems.append(f"{where}: EDUCATION on a medical visit")
            member = c.get("member_id")
            if member not in enrolled:
                problems.append(f"{where}: member {member} is not in the roster")
            elif not any(PERIODS[p][0] <= c.get("service_date", "") <= PERIODS[p][1] for p in enrolled[member]):
                problems.append(f"{where}: {member} has no enrollment on {c.get('service_date')}")
            totals = Counter()
            for i, l in enumerate(c.get("lines", [])):
                if set(l) - LINE_FIELDS:
                    problems.append(f"{where}: lines[{i}]: unknown fields {set(l) - LINE_FIELDS}")
                if not two_decimals(l.get("amount", "")):
                    problems.append(f"{where}: lines[{i}].amount {l.get('amount')!r} needs two decimals")
                    continue
                cls = l.get("expense_class")
                if cls not in ("IN_SCOPE", "B_SELF_PAY", "OUT_OF_CATALOGUE", "OTHER_LOSS", "NON_COMPLIANT"):
                    problems.append(f"{where}: lines[{i}].expense_class {cls!r}")
                if (visit == "NON_MEDICAL") != (cls == "OTHER_LOSS"):
                    problems.append(f"{where}: lines[{i}]: {cls} on a {visit} claim")
                totals[cls] += yuan(l["amount"])
            upstream = 0
            kinds = set()
            for i, u in enumerate(c.get("upstream", [])):
                if set(u) - UPSTREAM_FIELDS:
                    problems.append(f"{where}: upstream[{i}]: unknown fields {set(u) - UPSTREAM_FIELDS}")
                if u.get("kind") not in ("BASIC", "CRITICAL_ILLNESS") or u.get("kind") in kinds:
                    problems.append(f"{where}: upstream[{i}].kind {u.get('kind')!r}")
                kinds.add(u.get("kind"))
                if not two_decimals(u.get("amount", "")):
                    problems.append(f"{where}: upstream[{i}].amount {u.get('amount')!r} needs two decimals")
                    continue
                upstream += yuan(u["amount"])
            if visit == "NON_MEDICAL" and c.get("upstream"):
                problems.append(f"{where}: upstream payments on a NON_MEDICAL claim")
            if upstream > totals["IN_SCOPE"]:
                problems.append(f"{where}: upstream {money(upstream)} above IN_SCOPE {money(totals['IN_SCOPE'])}")
            if sum(totals.values()) > yuan("100000000.00"):
                problems.append(f"{where}: total above 100,000,000.00")
    return problems, count


def check():
    problems, enrolled = check_roster(EXAMPLES / "roster.csv")
    files = sorted(HERE.glob("*.jsonl"))
    counts = {}
    for path in files:
        p, counts[path.name] = check_claims(path, enrolled)
        problems += p
    for p in problems:
        print(p)
    print(f"roster: {len(enrolled)} members; " + ", ".join(f"{k}: {v} claims" for k, v in counts.items()))
    return 1 if problems else 0


def main():
    if sys.argv[1:] == ["--check"]:
        return check()
    if sys.argv[1:]:
        print(__doc__)
        return 2
    rng = random.Random(SEED)
    rows, members, changes = roster(rng)
    (EXAMPLES / "roster.csv").write_text(roster_csv(rows))
    (HERE / "day.jsonl").write_text(jsonl(day_claims(rng, members, changes)))
    a, a_after = worked_example_a()
    (HERE / "worked-example-a.jsonl").write_text(jsonl(a))
    (HERE / "worked-example-a-after-reversal.jsonl").write_text(jsonl(a_after))
    (HERE / "worked-example-b.jsonl").write_text(jsonl(worked_example_b()))
    return check()


if __name__ == "__main__":
    sys.exit(main())
