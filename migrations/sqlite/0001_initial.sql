-- Money is whole fen (BIGINT); dates are TEXT 'YYYY-MM-DD'; timestamps TEXT RFC 3339 UTC.
-- Settlements, layers and reversals are append-only: nothing here is ever updated or deleted, except
-- the running figures (accumulators, product_totals), which always equal a sum over the append-only
-- tables and change in the same transaction as the rows they sum.

CREATE TABLE terms (
    product_code  TEXT    NOT NULL,
    period_start  TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    period_end    TEXT    NOT NULL,
    toml          TEXT    NOT NULL,
    applied_at    TEXT    NOT NULL,
    PRIMARY KEY (product_code, period_start, version)
);

CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

CREATE TABLE member_categories (
    member_id       TEXT NOT NULL REFERENCES members (member_id),
    effective_date  TEXT NOT NULL,
    category        TEXT NOT NULL,
    PRIMARY KEY (member_id, effective_date)
);

CREATE TABLE enrollments (
    member_id     TEXT    NOT NULL REFERENCES members (member_id),
    product_code  TEXT    NOT NULL,
    period_start  TEXT    NOT NULL,
    premium_fen   BIGINT  NOT NULL,
    PRIMARY KEY (member_id, product_code, period_start)
);

CREATE TABLE settlements (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    hospital_id      TEXT    NOT NULL,
    claim_id         TEXT    NOT NULL,
    member_id        TEXT    NOT NULL,
    service_date     TEXT    NOT NULL,
    category         TEXT    NOT NULL,
    claim_json       TEXT    NOT NULL,
    total_cost_fen   BIGINT  NOT NULL,
    upstream_fen     BIGINT  NOT NULL,
    payout_fen       BIGINT  NOT NULL,
    out_of_pocket_fen BIGINT NOT NULL,
    reasons          TEXT    NOT NULL,
    settled_at       TEXT    NOT NULL,
    UNIQUE (hospital_id, claim_id)
);
CREATE INDEX settlements_service_date ON settlements (service_date);
CREATE INDEX settlements_member ON settlements (member_id);

CREATE TABLE settlement_layers (
    seq             BIGINT  NOT NULL REFERENCES settlements (seq),
    layer_index     INTEGER NOT NULL,
    product_code    TEXT    NOT NULL,
    period_start    TEXT    NOT NULL,
    period_end      TEXT    NOT NULL,
    terms_version   INTEGER NOT NULL,
    layer_order     BIGINT  NOT NULL,
    benefit_code    TEXT,
    eligible_fen    BIGINT  NOT NULL,
    deductible_fen  BIGINT  NOT NULL,
    payout_fen      BIGINT  NOT NULL,
    reasons         TEXT    NOT NULL,
    PRIMARY KEY (seq, layer_index)
);
CREATE INDEX settlement_layers_product ON settlement_layers (product_code, period_start);

CREATE TABLE reversals (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    settlement_seq  BIGINT NOT NULL UNIQUE REFERENCES settlements (seq),
    reversed_at     TEXT   NOT NULL
);

CREATE TABLE accumulators (
    member_id            TEXT   NOT NULL,
    product_code         TEXT   NOT NULL,
    period_start         TEXT   NOT NULL,
    benefit_code         TEXT   NOT NULL,
    deductible_used_fen  BIGINT NOT NULL,
    band_position_fen    BIGINT NOT NULL,
    paid_fen             BIGINT NOT NULL,
    PRIMARY KEY (member_id, product_code, period_start, benefit_code)
);

CREATE TABLE product_totals (
    product_code         TEXT   NOT NULL,
    period_start         TEXT   NOT NULL,
    written_premium_fen  BIGINT NOT NULL,
    enrolled_members     BIGINT NOT NULL,
    paid_fen             BIGINT NOT NULL,
    paid_claims          BIGINT NOT NULL,
    PRIMARY KEY (product_code, period_start)
);
